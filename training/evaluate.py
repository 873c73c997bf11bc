"""Quality metrics of a published model: python -m training.evaluate <model>[@version] [--n 10000] [--json out.json]

    python -m training.evaluate all --docs docs/models   # every model: metrics, quality bars, docs/models

Samples the model's generator.onnx with onnxruntime (latents from protos.latents, seed 0), classifies images
with the mnist-evaluator's ONNX graph, and computes with ganserve.metrics (torch-free):
  images (MNIST), against the MNIST test split (10k):
    classes_covered, kl_uniform = KL(class histogram || uniform), class_hist,
    conditional models: conditional_accuracy (overall, per class) with labels 0..9 cycled,
    frechet (Frechet distance on evaluator features; not "FID"), kid, precision, recall (k=3),
    and each feature metric divided by the real-data figure (10k train images vs the test split):
    frechet_ratio, precision_ratio, recall_ratio.
  points (ring8, grid25): modes, high_quality, reverse_kl (VEEGAN/PacGAN protocol, 2,500 samples), spread (RMS
  distance of the high-quality samples to their mode relative to the data's: 1 = right width, < 1 too narrow).
No torch here: the same functions run during training (on torch samples) and here (on ONNX samples).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from ganserve import metrics as M
from ganserve.data import MIXTURES, load_mnist, reference
from ganserve.inversion.runtime import measure
from ganserve.store import sessions as stores
from ganserve.store.manifest import check_input_range, generator_names, read_manifest, verify_files
from protos.latents import latents
from training.config import PROJECT, project_path

EVALUATOR = "mnist-evaluator"
PR_K = 3


# --- the evaluator classifier -------------------------------------------------------------------------

class Evaluator:
    """The mnist-evaluator ONNX graph: images (N, 1, 28, 28) in [0, 1] -> (logits (N, 10), features (N, F)).

    Graph input/output names come from the manifest's classifier graph (input, then logits and features)."""

    def __init__(self, version_dir: Path, threads: int = 1):
        self.dir = Path(version_dir)
        self.manifest = read_manifest(self.dir)
        verify_files(self.dir, self.manifest)
        graph = self.manifest["graphs"]["classifier"]
        self.input = graph["inputs"][0]["name"]
        self.outputs = [o["name"] for o in graph["outputs"][:2]]
        self.session = stores.open_session(self.dir / graph["file"], threads=threads)
        self.id = f"{self.manifest['name']}@{self.manifest['version']}"

    def __call__(self, x01: np.ndarray, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        x01 = np.asarray(x01, np.float32)
        if x01.ndim != 4 or x01.shape[1:] != (1, 28, 28):
            raise ValueError(f"evaluator input must be (N, 1, 28, 28), got {x01.shape}")
        check_input_range(self.manifest, x01)
        logits, feats = [], []
        for i in range(0, len(x01), batch):
            lo, fe = self.session.run(self.outputs, {self.input: np.ascontiguousarray(x01[i:i + batch])})
            logits.append(lo)
            feats.append(fe)
        return np.concatenate(logits), np.concatenate(feats).astype(np.float64)


def find_evaluator(store: str | Path = "model_store", required: bool = True) -> Evaluator | None:
    """The newest mnist-evaluator in `store` (a relative path is the project's: training/config.project_path)."""
    store = project_path(store)
    path = stores.latest(store, EVALUATOR)
    if path is None:
        if required:
            raise FileNotFoundError(f"no {EVALUATOR} in {store}: train it with python -m training.run {EVALUATOR}")
        return None
    return Evaluator(path)


# --- metrics ------------------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _real_reference(evaluator_dir: str, n: int) -> dict:
    """Evaluator features of the MNIST test split (n images) and of n training images, and the real-data
    figures (train vs test) every generator is compared with."""
    ev = Evaluator(Path(evaluator_dir))
    x_test, _ = reference("mnist-test", n=n, seed=0)
    x_train, _ = reference("mnist-train", n=n, seed=0)
    _, f_test = ev(x_test)
    _, f_train = ev(x_train)
    precision, recall = M.precision_recall(f_test, f_train, k=PR_K)
    return {"features": f_test, "n": n, "frechet": M.frechet_distance(f_test, f_train),
            "kid": M.kid(f_test, f_train), "precision": precision, "recall": recall}


def real_reference(evaluator: Evaluator, n: int = 10000) -> dict:
    return _real_reference(str(evaluator.dir), min(n, 10000))


def kl_uniform(counts: np.ndarray) -> float:
    """KL(class histogram || uniform) in nats (plug-in)."""
    k = len(counts)
    return M.estimate("kl_qp", np.ones(k), np.asarray(counts), p_exact=True, bootstrap=0).value


def image_metrics(evaluator: Evaluator, x01: np.ndarray, requested: np.ndarray | None, ref: dict) -> dict:
    """Class-level and feature-level metrics of generated images x01 (N, 1, 28, 28) in [0, 1]."""
    logits, feats = evaluator(x01)
    pred = logits.argmax(1)
    counts = M.class_histogram(pred, 10)
    out = {"classes_covered": M.classes_covered(counts), "kl_uniform": kl_uniform(counts),
           "class_hist": [int(c) for c in counts]}
    if requested is not None:
        acc, per_class = M.conditional_accuracy(np.asarray(requested), pred, 10)
        out["conditional_accuracy"] = acc
        out["conditional_accuracy_min_class"] = float(np.nanmin(per_class))
        out["conditional_accuracy_per_class"] = [round(float(a), 4) for a in per_class]
    precision, recall = M.precision_recall(ref["features"], feats, k=PR_K)
    out.update(frechet=M.frechet_distance(ref["features"], feats), kid=M.kid(ref["features"], feats),
               precision=precision, recall=recall)
    out.update(frechet_ratio=out["frechet"] / ref["frechet"], precision_ratio=precision / ref["precision"],
               recall_ratio=recall / ref["recall"], real_frechet=ref["frechet"], real_precision=ref["precision"],
               real_recall=ref["recall"], real_kid=ref["kid"], n=len(x01))
    return out


def point_metrics(points: np.ndarray, mixture) -> dict:
    return {k: float(v) for k, v in M.mixture_metrics(points, mixture).items()}


def summarize_seeds(per_seed: list[dict], seeds: list[int]) -> dict:
    """Mean and spread over training seeds; the first seed's own numbers come first (the shipped model)."""
    out = {k: v for k, v in per_seed[0].items()}
    for key in per_seed[0]:
        vals = np.array([m[key] for m in per_seed], np.float64)
        out[f"{key}_mean"] = float(vals.mean())
        out[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out[f"{key}_min"] = float(vals.min())
        out[f"{key}_max"] = float(vals.max())
    out["seeds"] = len(seeds)
    out["per_seed"] = [dict(seed=s, **m) for s, m in zip(seeds, per_seed)]
    return out


# --- sampling a published model ---------------------------------------------------------------------------

def sample_onnx(path: Path, latent_dim: int, num_classes: int, n: int, seed: int = 0, batch: int = 1000,
                threads: int = 2, names: tuple[str, str | None, str] = ("z", "y", "x"),
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """(samples, requested labels or None) from a generator ONNX file; labels cycle 0..K-1 (one-hot y).

    `names` are the graph's latent input, class input and sample output (a published model's come from its
    manifest: manifest.generator_names; our exports use z, y, x)."""
    z_name, y_name, x_name = names
    sess = stores.open_session(path, threads=threads)
    z = latents(seed, n, latent_dim)
    labels = np.arange(n) % num_classes if num_classes else None
    out = []
    for i in range(0, n, batch):
        feeds = {z_name: z[i:i + batch]}
        if num_classes:
            feeds[y_name] = np.eye(num_classes, dtype=np.float32)[labels[i:i + batch]]
        out.append(sess.run([x_name], feeds)[0])
    return np.concatenate(out), labels


def evaluate_generator_onnx(path: Path, latent_dim: int, num_classes: int, evaluator: Evaluator,
                            n: int = 10000, seed: int = 0, names: tuple[str, str | None, str] = ("z", "y", "x"),
                            ) -> dict:
    x, labels = sample_onnx(path, latent_dim, num_classes, n, seed, names=names)
    return image_metrics(evaluator, (x + 1) / 2, labels, real_reference(evaluator, n))


def evaluate_model(version_dir: Path, store: Path, n: int | None = None, seed: int = 0,
                   inversion: bool = True) -> dict:
    """Metrics of one published version (verifying its files first)."""
    m = read_manifest(version_dir)
    verify_files(version_dir, m)
    result = {"model": f"{m['name']}@{m['version']}", "kind": m["kind"], "n": n, "seed": seed}
    if m["kind"] == "evaluator":
        ev = Evaluator(version_dir)
        test = load_mnist("test")
        logits, _ = ev(test.images)
        acc, per_class = M.conditional_accuracy(test.labels, logits.argmax(1), 10)
        ref = real_reference(ev, 10000)
        result.update(test_accuracy=acc, test_accuracy_min_class=float(np.nanmin(per_class)),
                      real_frechet=ref["frechet"], real_kid=ref["kid"], real_precision=ref["precision"],
                      real_recall=ref["recall"], n=len(test.labels))
        return result
    gen = m["graphs"]["generator"]
    if m["data_kind"] == "points":
        n = n or 2500
        x, _ = sample_onnx(version_dir / gen["file"], m["latent_dim"], 0, n, seed, names=generator_names(m))
        data = m.get("training", {}).get("config", {}).get("data")  # our manifests say; else the name must
        mixture = MIXTURES[data]() if data in MIXTURES else next(
            (mk() for name, mk in MIXTURES.items() if name in m["name"]), None)
        if mixture is None:
            raise ValueError(f"{m['name']}: cannot tell which mixture it was trained on (training.config.data)")
        result.update(point_metrics(x, mixture), n=n)
        return result
    n = n or 10000
    ev = find_evaluator(store)
    result.update(evaluate_generator_onnx(version_dir / gen["file"], m["latent_dim"], m["num_classes"], ev, n, seed,
                                          names=generator_names(m)), evaluator=ev.id)
    if inversion and "generator_grad" in m["graphs"]:  # ganserve/inversion/runtime.py, as the server
        result.update(measure(version_dir, ev, log=lambda *_: None))
    return result


# --- the quality bars -------------------------------------------------------------------------------------

# (metric, comparison, threshold); mixtures use the manifest's mean over training seeds (`<metric>_mean`).
BARS = {
    "evaluator": [("test_accuracy", ">=", 0.99)],
    "cgan": [("conditional_accuracy", ">=", 0.99), ("conditional_accuracy_min_class", ">=", 0.97),
             ("frechet_ratio", "<=", 10.0), ("precision_ratio", ">=", 0.6), ("recall_ratio", ">=", 0.6)],
    "image": [("classes_covered", ">=", 10), ("kl_uniform", "<=", 0.02), ("frechet_ratio", "<=", 15.0),
              ("recall_ratio", ">=", 0.6)],
    "ring8": [("modes_mean", ">=", 7.95), ("high_quality_mean", ">=", 0.98), ("reverse_kl_mean", "<=", 0.03)],
    "grid25": [("modes_mean", ">=", 24.9), ("high_quality_mean", ">=", 0.96), ("reverse_kl_mean", "<=", 0.03)],
}
MAX_TRAIN_S = 30 * 60  # each MNIST model trains in <= 30 minutes on 2 CPU cores


def quality_bars(result: dict, manifest: dict) -> dict[str, bool]:
    """{"<metric> <op> <threshold>": met} for the bars set for this kind of model ({} for other kinds)."""
    if manifest["kind"] not in ("evaluator", "gan", "wgan-gp", "cgan"):
        return {}
    if manifest["kind"] == "evaluator":
        key, values = "evaluator", result
    elif manifest["data_kind"] == "points":
        key, values = manifest["training"]["config"]["data"], manifest["metrics"]
    else:
        key, values = ("cgan" if manifest["kind"] == "cgan" else "image"), result
    out = {}
    for metric, op, bound in BARS[key]:
        v = values.get(metric)
        ok = v is not None and not (isinstance(v, float) and math.isnan(v)) and (
            v >= bound if op == ">=" else v <= bound)
        out[f"{metric} {op} {bound:g}"] = bool(ok)
    if manifest["data_kind"] == "image" and manifest["kind"] != "evaluator":
        out[f"training <= {MAX_TRAIN_S // 60} min"] = manifest["training"]["wall_time_s"] <= MAX_TRAIN_S
    return out


SHOWN = ["classes_covered", "kl_uniform", "conditional_accuracy", "conditional_accuracy_min_class", "frechet",
         "frechet_ratio", "kid", "precision", "precision_ratio", "recall", "recall_ratio", "modes", "high_quality",
         "reverse_kl", "spread", "test_accuracy", "test_accuracy_min_class", "real_frechet", "real_precision", "real_recall",
         *[f"inversion_{m}_{k}" for m in ("encoder", "optimize", "hybrid")
           for k in ("real_mse", "real_label_agreement", "own_mse", "own_cosine", "ms_per_image")]]


def format_table(result: dict) -> str:
    rows = [(k, result[k]) for k in SHOWN if k in result]
    width = max(len(k) for k, _ in rows) if rows else 10
    lines = [f"{result['model']} ({result['kind']}, n={result['n']}, seed={result['seed']})"]
    for k, v in rows:
        lines.append(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")
    return "\n".join(lines)


# --- docs/models: the README's table of shipped models ------------------------------------------------------

def _pm(metrics: dict, key: str, fmt: str, scale: float = 1.0) -> str:
    """'mean ± std' over training seeds (mixtures)."""
    return f"{format(metrics[key + '_mean'] * scale, fmt)} ± {format(metrics[key + '_std'] * scale, fmt)}"


def summary_row(result: dict, manifest: dict) -> dict:
    """One shipped model's line of docs/models/summary.json."""
    tr, ex, m = manifest["training"], manifest.get("export", {}), manifest["metrics"]
    row = {"model": result["model"], "kind": manifest["kind"], "description": manifest.get("description", ""),
           "params": ex.get("generator_params", ex.get("params")), "critic_params": ex.get("critic_params"),
           "wall_time_s": tr.get("wall_time_s"), "steps": tr.get("steps"),
           "samples_per_s": ex.get("inprocess_samples_per_s"), "bars": quality_bars(result, manifest)}
    if manifest["kind"] == "evaluator":
        row["key_metrics"] = f"test accuracy {result['test_accuracy']:.2%} (worst class " \
                             f"{result['test_accuracy_min_class']:.2%})"
    elif manifest["data_kind"] == "points":
        row["wall_time_all_seeds_s"] = tr.get("wall_time_all_seeds_s")
        row["seeds"] = m.get("seeds")
        row["seed_metrics"] = {k: m[k] for k in m if k.endswith(("_mean", "_std", "_min", "_max"))}
        row["key_metrics"] = (f"modes {_pm(m, 'modes', '.2f')}, high quality {_pm(m, 'high_quality', '.1f', 100)}%, "
                              f"reverse KL {_pm(m, 'reverse_kl', '.3f')} ({m.get('seeds')} seeds); "
                              f"spread {result['spread']:.2f} (seed 0; 1 = the data's)")
    else:
        parts = []
        if "conditional_accuracy" in result:
            parts.append(f"cond. accuracy {result['conditional_accuracy']:.2%} (worst class "
                         f"{result['conditional_accuracy_min_class']:.1%})")
        parts += [f"classes {result['classes_covered']}/10", f"KL(hist‖U) {result['kl_uniform']:.4f}",
                  f"Fréchet {result['frechet']:.2f} = {result['frechet_ratio']:.1f}× real",
                  f"precision {result['precision_ratio']:.2f}× / recall {result['recall_ratio']:.2f}× real"]
        row["key_metrics"] = ", ".join(parts)
    row["metrics"] = {k: v for k, v in result.items() if isinstance(v, (int, float)) and k not in ("n", "seed")}
    return row


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | kind | generator params | training wall time | key metrics | bars met |",
             "| --- | --- | ---: | ---: | --- | --- |"]
    by_model = {r["model"]: r for r in rows}
    for r in rows:
        if not r["params"] and r.get("derived_from") is not None:  # a variant has its source's parameters
            r = {**r, "params": by_model.get(f"{r['model'].split('@')[0]}@{r['derived_from']}", {}).get("params")}
        wall = r["wall_time_s"]
        t = f"{wall / 60:.1f} min" if wall else "?"
        if r.get("wall_time_all_seeds_s"):
            t += f" (all {r['seeds']} seeds: {r['wall_time_all_seeds_s'] / 60:.1f} min)"
        met = [k for k, ok in r["bars"].items() if ok]
        missed = [k for k, ok in r["bars"].items() if not ok]
        bars = f"{len(met)}/{len(r['bars'])}" + (f"; missed: {', '.join(f'`{k}`' for k in missed)}" if missed else "")
        bars = bars if r["bars"] else "—"
        params = f"{r['params']:,}" if r["params"] else "?"
        lines.append(f"| `{r['model']}` | {r['kind']} | {params} | {t} | {r['key_metrics']} | {bars} |")
    return "\n".join(lines)


def write_docs(results: list[dict], store: Path, docs: Path, command: str) -> None:
    """docs/<name>/{samples,curves}.png, summary.json and README.md (generated; never edited by hand)."""
    docs.mkdir(parents=True, exist_ok=True)
    rows = []
    for res in results:
        name, version = res["model"].split("@")
        vdir = Path(store) / name / version
        manifest = read_manifest(vdir)
        rows.append(summary_row(res, manifest))
        (docs / name).mkdir(exist_ok=True)
        for f in ("samples.png", "curves.png"):
            if (vdir / f).is_file():
                shutil.copyfile(vdir / f, docs / name / f)
    (docs / "summary.json").write_text(json.dumps(
        {"generated_by": command, "models": rows}, indent=2,
        default=lambda o: None if isinstance(o, float) and math.isnan(o) else o) + "\n")
    (docs / "README.md").write_text(models_readme(rows, command, docs))


def models_readme(rows: list[dict], command: str, docs: Path) -> str:
    """docs/models/README.md from the rows of summary.json (`python -m docs.generate` rewrites it the same way)."""
    pics = "\n".join(f"| `{r['model']}` | ![samples]({r['model'].split('@')[0]}/samples.png) | "
                      f"![curves]({r['model'].split('@')[0]}/curves.png) |" for r in rows
                      if not r.get("precision") and (docs / r["model"].split("@")[0] / "samples.png").exists())
    return (
        f"<!-- GENERATED by `{command}`: do not edit by hand; rerun the command. -->\n"
        "# Shipped models\n\nMNIST models: 10,000 samples (latents seed 0) against the MNIST test split, "
        "scored with the shipped `mnist-evaluator`; \"× real\" divides by the figure of 10,000 real training "
        "images against the same test split. Mixtures: 2,500 samples per training seed (VEEGAN/PacGAN protocol), "
        "mean ± standard deviation over the seeds; the shipped generator is seed 0. Bars: `quality_bars` in "
        "training/evaluate.py. Training wall time is the wall clock each manifest records, on the 2-core "
        "development machine while other jobs often shared it (one to ten at a time), so it can overstate a "
        "dedicated run.\n\n"
        f"{markdown_table(rows)}\n\n| model | samples | training curves |\n| --- | --- | --- |\n{pics}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="model name, name@version, or 'all'")
    p.add_argument("--store", type=Path, default=PROJECT / "model_store")
    p.add_argument("--n", type=int, default=None, help="samples (default 10000 images / 2500 points)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--no-inversion", action="store_true", help="skip the inversion measurements")
    p.add_argument("--docs", type=Path, default=None,
                   help="also write <docs>/summary.json, README.md and each model's preview PNGs")
    args = p.parse_args(argv)
    if args.n is not None and args.n < 10:
        p.error(f"--n must be >= 10, got {args.n}")
    specs = args.models
    if specs == ["all"]:
        specs = sorted(q.name for q in args.store.iterdir() if q.is_dir() and not q.name.startswith("."))
    results = []
    for spec in specs:
        try:
            res = evaluate_model(stores.resolve(args.store, spec), args.store, args.n, args.seed, not args.no_inversion)
        except (FileNotFoundError, ValueError) as e:
            print(f"{spec}: {e}", file=sys.stderr)
            return 1
        print(format_table(res))
        results.append(res)
    if args.docs:
        write_docs(results, args.store, args.docs, "python -m training.evaluate " + " ".join(argv or sys.argv[1:]))
    if args.json:
        args.json.write_text(json.dumps(results if len(results) > 1 else results[0], indent=2,
                                        default=lambda o: None if isinstance(o, float) and math.isnan(o) else o) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
