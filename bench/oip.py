"""python -m bench.oip [--quick] [--json out.json] [--model cgan-mnist] [--rounds 3] [--duration 2]

What the Open Inference Protocol (v2) costs next to ganserve's own API, on one `python -m server` and one load
process (bench/load.py): ganserve.v1 Sample/SampleConditional against v2 ModelInfer (raw bytes in and out, as
tritonclient sends them) on the same model, seeds and labels, in interleaved rounds (v1 v2 v2 v1 ...) at
n = 1 with one client, n = 256 with one client, and n = 1 with 32 clients. Each cell: the median over rounds of
samples/s, the p50/p99 latency, the server's CPU per request, and the v2/v1 ratios measured in the same run.
The target: v2 costs no more than ~10% over v1 at n = 256 (samples/s ratio >= 0.9).

Prints a markdown table; writes JSON (default bench/results/oip-<time>.json). Run it under `nice -n 10` on a
shared machine: every ratio is of two contenders measured in alternation, so noise hits both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from bench.rounds import Load, interleaved, log
from bench.report import _table
from bench.servers import ROOT, Ganserve
from ganserve.store import sessions

CELLS = (("n=1, 1 client", 1, 1), ("n=256, 1 client", 256, 1), ("n=1, 32 clients", 1, 32))
TARGET_RATIO = 0.9  # v2 samples/s over v1 at n = 256


def measure(address: str, model: str, num_classes: int, *, rounds: int, duration: float, load: Load,
            server: Ganserve) -> list[dict]:
    rows = []
    for label, n, clients in CELLS:
        cmds = [(proto, {"op": "run", "target": {"kind": kind, "address": address, "model": model,
                                                  "num_classes": num_classes},
                         "n": n, "concurrency": clients, "duration": duration, "warmup": 0.3}, server)
                for proto, kind in (("v1", "grpc"), ("v2", "grpc-v2"))]
        log(f"{label}: {rounds} rounds of v1 and v2, {duration:g} s each")
        got = interleaved(load, cmds, rounds)
        v1, v2 = got["v1"], got["v2"]
        row = {"cell": label, "n": n, "clients": clients, "v1": v1, "v2": v2}
        if "samples_per_s" in v1 and "samples_per_s" in v2:
            row["throughput_ratio"] = v2["samples_per_s"] / v1["samples_per_s"]
            row["p50_ratio"] = v2["p50_ms"] / v1["p50_ms"]
            if "server_cpu_ms_per_req" in v1 and "server_cpu_ms_per_req" in v2:
                row["server_cpu_ratio"] = v2["server_cpu_ms_per_req"] / v1["server_cpu_ms_per_req"]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    def cell(r: dict) -> list[str]:
        if "samples_per_s" not in r:
            return ["error: " + r.get("error", "?")[:40], "", ""]
        return [f"{r['samples_per_s']:,.0f}", f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}",
                f"{r.get('server_cpu_ms_per_req', float('nan')):.2f}"]

    body = []
    for row in rows:
        ratios = [f"{row[k]:.3f}" if k in row else "—" for k in ("throughput_ratio", "p50_ratio", "server_cpu_ratio")]
        body.append([row["cell"], *cell(row["v1"]), *cell(row["v2"]), *ratios])
    return _table(["load", "v1 samples/s", "v1 p50 / p99 ms", "v1 server CPU ms/req", "v2 samples/s",
                   "v2 p50 / p99 ms", "v2 server CPU ms/req", "v2/v1 samples/s", "v2/v1 p50", "v2/v1 CPU/req"], body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.oip", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one round of 1 s per contender and cell (a check it works)")
    p.add_argument("--json", type=Path, default=None, help="result file (default bench/results/oip-<time>.json)")
    p.add_argument("--store", type=Path, default=ROOT / "model_store")
    p.add_argument("--model", default="cgan-mnist")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds per cell (each: v1 once, v2 once)")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per contender and round")
    args = p.parse_args(argv)
    rounds, duration = (1, 1.0) if args.quick else (args.rounds, args.duration)
    newest = sessions.latest(args.store, args.model)
    manifest = json.loads((newest / "manifest.json").read_text())
    num_classes = manifest["num_classes"] if manifest["kind"] in ("cgan", "latent-constraint") else 0
    started = dt.datetime.now(dt.UTC)
    load = Load()
    try:
        with Ganserve(args.store, args=("--metrics-port", "-1")) as server:
            rows = measure(server.address, args.model, num_classes, rounds=rounds, duration=duration, load=load,
                           server=server)
    finally:
        load.close()
    n256 = next(r for r in rows if r["n"] == 256)
    met = n256.get("throughput_ratio", 0.0) >= TARGET_RATIO
    verdict = (f"v2 at n=256: {n256.get('throughput_ratio', float('nan')):.3f} of v1's samples/s "
               f"(target >= {TARGET_RATIO}): {'met' if met else 'NOT met'}")
    print(f"ganserve v1 against the Open Inference Protocol (v2) over gRPC, model {args.model}, "
          f"{rounds} round(s) x {duration:g} s, {started:%Y-%m-%d %H:%M} UTC\n")
    print(table(rows))
    print(f"\n{verdict}")
    out = args.json or ROOT / "bench" / "results" / f"oip-{started:%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started": started.isoformat(), "model": args.model, "rounds": rounds,
                               "duration_s": duration, "cells": rows, "target_ratio": TARGET_RATIO,
                               "target_met": met, "verdict": verdict}, indent=1))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
