"""Publish a reduced-precision (int8) variant of a shipped image generator, judged by the evaluator.

    python -m training.quantize gan-mnist cgan-mnist [--format qdq|qoperator] [--store model_store]

Steps for each model: 1. take its newest valid fp32 version; 2. build the int8 generator
(ganserve/store/quantize.py: sub-pixel rewrite of the ConvTransposes, static quantization calibrated on latents
of the model's own prior, seed 1, with class labels cycling for a conditional model); 3. evaluate fp32 and
int8 with training.evaluate's protocol (10,000 samples, latents seed 0, the shipped evaluator) in the same
run; 4. publish the variant as a new version: manifest `precision: int8`, `derived_from: <fp32 version>`, the
int8 figures in `metrics` and the fp32 ones measured beside them in `quantization.fp32_metrics`. Only the
generator graph goes in (a few MB); Invert and critic-based estimates stay with the fp32 version. Whether the
variant is served as "name@int8" is the version policy's call (VARIANT_TOLERANCES in ganserve/store/policy.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from ganserve.store import manifest as mf
from ganserve.store import policy as pol
from ganserve.store import quantize as Q
from ganserve.store import sessions as stores
from protos.latents import latents
from training.config import PROJECT
from training.evaluate import evaluate_generator_onnx, find_evaluator, models_readme, summary_row

CALIBRATION_SEED, CALIBRATION_BATCHES, CALIBRATION_BATCH = 1, 16, 64
JUDGED = ("conditional_accuracy", "conditional_accuracy_min_class", "frechet", "kl_uniform", "precision", "recall")


def calibration_feeds(manifest: dict) -> list[dict[str, np.ndarray]]:
    """Batches of the generator's inputs drawn from its own prior: latents of seed 1 (not the evaluation's
    seed 0), one-hot labels cycling over the classes for a conditional model."""
    z_name, y_name, _ = mf.generator_names(manifest)
    n = CALIBRATION_BATCHES * CALIBRATION_BATCH
    z = latents(CALIBRATION_SEED, n, manifest["latent_dim"])
    k = manifest["num_classes"]
    feeds = []
    for i in range(0, n, CALIBRATION_BATCH):
        f = {z_name: z[i:i + CALIBRATION_BATCH]}
        if y_name is not None and k:
            f[y_name] = np.eye(k, dtype=np.float32)[np.arange(i, i + CALIBRATION_BATCH) % k]
        feeds.append(f)
    return feeds


def variant_manifest(source: dict, metrics: dict, fp32_metrics: dict, info: dict, parity: dict) -> dict:
    """The variant's manifest: the source's, with the generator graph only and the variant's own figures."""
    keep = {k: v for k, v in source.items() if k not in ("graphs", "files", "metrics", "export", "candidate")}
    figures = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {**keep, "precision": "int8", "derived_from": source["version"],
            "description": f"{source.get('description', '')} [int8 variant of @{source['version']}]",
            "graphs": {"generator": source["graphs"]["generator"]}, "metrics": figures,
            "quantization": {**info, "calibration": {"seed": CALIBRATION_SEED, "samples":
                                                     CALIBRATION_BATCHES * CALIBRATION_BATCH},
                             "fp32_metrics": {k: fp32_metrics[k] for k in JUDGED if k in fp32_metrics}},
            "export": {"parity_vs_fp32": parity}}


def parity(fp32: Path, int8: Path, manifest: dict, n: int = 1000) -> dict:
    """Max and mean absolute difference of int8 from fp32 outputs on n prior latents (seed 0)."""
    z_name, y_name, x_name = mf.generator_names(manifest)
    feeds = {z_name: latents(0, n, manifest["latent_dim"])}
    if y_name is not None and manifest["num_classes"]:
        feeds[y_name] = np.eye(manifest["num_classes"], dtype=np.float32)[np.arange(n) % manifest["num_classes"]]
    a = stores.open_session(fp32).run([x_name], feeds)[0]
    b = stores.open_session(int8).run([x_name], feeds)[0]
    return {"max_abs_diff": float(np.abs(a - b).max()), "mean_abs_diff": float(np.abs(a - b).mean()), "n": n}


def make_variant(store: Path, name: str, fmt: str, n: int, publish: bool = True) -> dict:
    folder, source = stores.newest_valid(store, name)
    if source["data_kind"] != "image" or source["kind"] == "evaluator":
        raise ValueError(f"{name}: only image generators get int8 variants")
    gen = folder / source["graphs"]["generator"]["file"]
    ev = find_evaluator(store)
    names = mf.generator_names(source)
    with tempfile.TemporaryDirectory(prefix="ganserve-int8-") as tmp:
        out = Path(tmp) / source["graphs"]["generator"]["file"]
        info = Q.quantize_int8(gen, out, calibration_feeds(source), fmt=fmt)
        fp32 = evaluate_generator_onnx(gen, source["latent_dim"], source["num_classes"], ev, n, 0, names=names)
        int8 = evaluate_generator_onnx(out, source["latent_dim"], source["num_classes"], ev, n, 0, names=names)
        manifest = variant_manifest(source, {**int8, "n": n}, fp32, info, parity(gen, out, source))
        verdict = pol.judge(manifest["metrics"], fp32, source["version"], pol.VARIANT_TOLERANCES)
        result = {"model": name, "source": source["version"], "fp32": {k: fp32.get(k) for k in JUDGED},
                  "int8": {k: int8.get(k) for k in JUDGED}, "verdict": verdict or "within VARIANT_TOLERANCES",
                  "parity": manifest["export"]["parity_vs_fp32"], "quantization": info}
        if publish:
            folder = mf.publish(store, manifest, {out.name: out})
            result["published"] = str(folder)
            result["row"] = variant_row(int8, mf.read_manifest(folder))
    return result


def variant_row(metrics: dict, manifest: dict) -> dict:
    """The variant's line of docs/models/summary.json (training.evaluate.summary_row, marked as a variant)."""
    row = summary_row({**metrics, "model": f"{manifest['name']}@{manifest['version']}"}, manifest)
    row["key_metrics"] = f"**int8** variant of @{manifest['derived_from']}: {row['key_metrics']}"
    row["precision"], row["derived_from"] = "int8", manifest["derived_from"]
    return row


def update_docs(docs: Path, rows: list[dict]) -> None:
    """Put the variants' rows into docs/models/summary.json (replacing older variant rows of the same models)
    after their fp32 rows, and rewrite docs/models/README.md; `python -m docs.generate` then updates README.md."""
    path = docs / "summary.json"
    summary = json.loads(path.read_text())
    names = {r["model"].split("@")[0] for r in rows}
    kept = [r for r in summary["models"] if not (r.get("precision") and r["model"].split("@")[0] in names)]
    for row in rows:
        name = row["model"].split("@")[0]
        at = max((i for i, r in enumerate(kept) if r["model"].split("@")[0] == name), default=len(kept) - 1)
        kept.insert(at + 1, row)
    summary["models"] = kept
    path.write_text(json.dumps(summary, indent=2) + "\n")
    (docs / "README.md").write_text(models_readme(kept, summary["generated_by"], docs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="image generator names (their newest fp32 version)")
    p.add_argument("--store", type=Path, default=PROJECT / "model_store")
    p.add_argument("--format", choices=sorted(Q.FORMATS), default="qdq",
                   help="QDQ (ONNX Runtime fuses it into QLinear kernels at load) or QOperator")
    p.add_argument("--n", type=int, default=10000, help="evaluation samples (training.evaluate's protocol)")
    p.add_argument("--dry-run", action="store_true", help="measure and print; publish nothing")
    p.add_argument("--docs", type=Path, default=None,
                   help="also put the published variants into <docs>/summary.json and README.md (docs/models)")
    args = p.parse_args(argv)
    if args.docs and not (args.docs / "summary.json").is_file():  # before minutes of quantizing, not after
        p.error(f"--docs {args.docs}: no summary.json there (the docs/models folder training.evaluate --docs wrote)")
    rows = []
    for name in args.models:
        try:
            res = make_variant(args.store, name, args.format, args.n, publish=not args.dry_run)
        except (FileNotFoundError, ValueError) as e:
            print(f"{name}: {e}", file=sys.stderr)
            return 1
        if "row" in res:
            rows.append(res.pop("row"))
        print(json.dumps(res, indent=2))
    if args.docs and rows:
        update_docs(args.docs, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
