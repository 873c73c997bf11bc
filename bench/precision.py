"""Reduced-precision variants beside fp32, in the same interleaved rounds: in-process and through the server.

    python -m bench.precision [--quick] [--models gan-mnist,cgan-mnist] [--json out.json]

For each model with a published int8 variant (`name@int8`, training/quantize.py): samples/s at n = 1, 64, 256
of ONNX Runtime in the load-generator process (1 intra-op thread; at n = 256 also the batch in two halves on two
1-thread runs, "2x1", what the server's two model runners do) and of the server (Sample over gRPC, one client),
for fp32 and int8, all in one rotation per round. Each cell is the median over rounds with the interquartile
range of the per-round values; ratios (int8 / fp32, served / in-process) are taken round by round, so a busy
machine's swings hit both sides of a ratio alike, and their median and range are reported. GFLOP/s-equivalent
counts the fp32 graph's FLOPs (bench/flops.py) per sample, so int8 can exceed the fp32 roof; the roof is the
best fp32 in-process rate of the run. The load average is recorded with every run: on a shared machine the
absolute rates mean little, the ratios are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench import flops
from bench.rounds import Load, interleaved, log
from bench.servers import ROOT, Ganserve
from ganserve.store import sessions

BATCHES = (1, 64, 256)
TARGETS = {"ratio_int8_vs_fp32_n256": 1.6, "served_vs_inprocess_n256": 0.90}


def spread(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"median": float(np.median(a)), "q25": float(np.percentile(a, 25)), "q75": float(np.percentile(a, 75)),
            "min": float(a.min()), "max": float(a.max()), "rounds": len(a)}


def contenders(model: str, precisions: dict[str, tuple[Path, dict]], address: str | None, n: int,
               duration: float) -> list:
    """(label, load command, None) for each precision: in-process t1 (and 2x1 at n >= 64), served."""
    out = []
    for word, (folder, m) in precisions.items():
        onnx_path = str(folder / m["graphs"]["generator"]["file"])
        base = {"op": "run", "n": n, "concurrency": 1, "encoding": "float32", "duration": duration,
                "warmup": min(0.3, duration / 2)}
        spec = {"kind": "inproc", "onnx": onnx_path, "latent_dim": m["latent_dim"], "num_classes": m["num_classes"]}
        out.append((f"{word}/inproc-t1", {**base, "target": {**spec, "threads": 1}}, None))
        if n >= 64:
            out.append((f"{word}/inproc-2x1", {**base, "target": {**spec, "threads": "2x1"}}, None))
        if address:
            ref = model if word == "fp32" else f"{model}@{word}"
            out.append((f"{word}/served", {**base, "target": {"kind": "grpc", "address": address, "model": ref,
                                                               "num_classes": m["num_classes"]}}, None))
    return out


def summarize(pooled: dict, n: int, fp32_flops: float) -> dict:
    rounds = {k: v.get("rounds_samples_per_s", []) for k, v in pooled.items()}
    cells = {k: {**spread(r), "gflops_equiv": float(np.median(r)) * fp32_flops / 1e9,
                 "p50_ms": pooled[k].get("p50_ms")} for k, r in rounds.items() if r}
    ratios = {}
    for k in cells:
        word, how = k.split("/", 1)
        if word != "fp32" and f"fp32/{how}" in rounds:
            ratios[f"{word}_vs_fp32/{how}"] = spread(np.divide(rounds[k], rounds[f"fp32/{how}"]).tolist())
        if how == "served":
            ceiling = f"{word}/inproc-2x1" if n >= 64 else f"{word}/inproc-t1"
            if ceiling in rounds:
                ratios[f"{word}/served_vs_{ceiling.split('/')[1]}"] = spread(
                    np.divide(rounds[k], rounds[ceiling]).tolist())
    return {"cells": cells, "ratios": ratios}


def run(models: list[str], store: Path, *, rounds: int, duration: float, serve: bool) -> dict:
    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_start": os.getloadavg(),
              "cpus": os.cpu_count(), "rounds": rounds, "duration_s": duration, "models": {}}
    found = {}
    for name in models:
        try:
            found[name] = {"fp32": sessions.newest_valid(store, name),
                           "int8": sessions.newest_valid(store, name, precision="int8")}
        except FileNotFoundError as e:
            log(f"{name}: skipped ({e})")
    load = Load()
    server = None
    try:
        if serve:
            server = Ganserve(store, args=("--warm-models", ",".join(
                f"{n}@{p[w][1]['version']}" for n, p in found.items() for w in p))).__enter__()
        for name, precisions in found.items():
            fp32_flops = flops.count(str(precisions["fp32"][0] / precisions["fp32"][1]["graphs"]["generator"]["file"]),
                                     batch=1).per_sample
            per_n = {}
            for n in BATCHES:
                pooled = interleaved(load, contenders(name, precisions, server.address if server else None, n, duration),
                                     rounds, usage=None)
                errors = {k: v["error"] for k, v in pooled.items() if "error" in v}
                if errors:
                    raise RuntimeError(f"{name} n={n}: {errors}")
                per_n[n] = {**summarize(pooled, n, fp32_flops), "loadavg": os.getloadavg()}
                log(f"{name} n={n}: " + "  ".join(f"{k} {v['median']:,.0f}/s" for k, v in per_n[n]["cells"].items())
                    + "  | " + "  ".join(f"{k} x{v['median']:.2f} [{v['min']:.2f}, {v['max']:.2f}]"
                                         for k, v in per_n[n]["ratios"].items()) + f"  load {os.getloadavg()[0]:.1f}")
            roof = max(c["gflops_equiv"] for r in per_n.values() for k, c in r["cells"].items() if k.startswith("fp32/"))
            result["models"][name] = {"versions": {w: p[1]["version"] for w, p in precisions.items()},
                                      "fp32_flops_per_sample": fp32_flops, "fp32_roof_gflops": roof, "batches": per_n}
    finally:
        if server is not None:
            server.__exit__(None, None, None)
        load.close()
    result["loadavg_end"] = os.getloadavg()
    return result


def table(result: dict) -> str:
    head = (f"Precision variants ({result['rounds']} interleaved rounds of {result['duration_s']} s; load average "
            f"{result['loadavg_start'][0]:.1f} at start, {result['loadavg_end'][0]:.1f} at end, {result['cpus']} CPUs)")
    lines = [head,
             "| model | n | contender | samples/s median [IQR] | GFLOP/s-eq (% of fp32 roof) | ratio median [min, max] |",
             "| --- | ---: | --- | --- | --- | --- |"]
    for name, r in result["models"].items():
        for n, b in r["batches"].items():
            for k, c in b["cells"].items():
                word, how = k.split("/", 1)
                ratio = b["ratios"].get(f"{word}_vs_fp32/{how}")
                shown = f"x{ratio['median']:.2f} [{ratio['min']:.2f}, {ratio['max']:.2f}] vs fp32" if ratio else ""
                served = b["ratios"].get(f"{word}/served_vs_inproc-2x1") or b["ratios"].get(f"{word}/served_vs_inproc-t1")
                if how == "served" and served:
                    shown = "; ".join(filter(None, [shown, f"{served['median']:.0%} [{served['min']:.0%}, "
                                                            f"{served['max']:.0%}] of in-process"]))
                lines.append(f"| {name} | {n} | {k} | {c['median']:,.0f} [{c['q25']:,.0f}, {c['q75']:,.0f}] | "
                             f"{c['gflops_equiv']:.1f} ({c['gflops_equiv'] / r['fp32_roof_gflops']:.0%}) | {shown} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="about a minute: 3 rounds of 0.4 s, gan-mnist only")
    p.add_argument("--models", default="gan-mnist,cgan-mnist")
    p.add_argument("--store", type=Path, default=ROOT / "model_store")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--duration", type=float, default=None, help="seconds per contender per round")
    p.add_argument("--no-server", action="store_true", help="in-process rounds only")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if args.quick and args.models == p.get_default("models"):
        models = models[:1]
    rounds = args.rounds or (3 if args.quick else 7)
    duration = args.duration or (0.4 if args.quick else 1.5)
    result = run(models, args.store, rounds=rounds, duration=duration, serve=not args.no_server)
    text = table(result)
    print(text)
    out = args.json or ROOT / "bench" / "results" / f"precision-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
