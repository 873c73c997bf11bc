"""The GPU check: the benchmark's core rounds on a machine with an NVIDIA GPU, in one short run with its own limit.

    python -m bench.gpu_check [--json bench/results/gpu-check.json] [--time-limit 540] [--model gan-mnist]
    python -m bench.gpu_check --dry-run      # on CPU: the same steps, tiny, without installing anything (CI)

Steps (each writes its part of the JSON as soon as it is done, so a run cut by the limit keeps what it measured):
1. the machine: GPU name, driver and memory from nvidia-smi, CPU count, load average;
2. onnxruntime-gpu installed into this environment when CUDAExecutionProvider is missing (pip; skipped with
   --no-install and always in a dry run);
3. in-process ONNX Runtime with the CUDA execution provider at n = 1 and 256, with and without I/O binding
   (inputs copied to the device once, outputs left on it: what the run costs without host transfers);
4. the server started with `--providers cuda`: Sample at n = 1 and n = 256 from one client, n = 1 from 32 clients
   (the Python load generator, bench/load.py), each against the in-process rate of the same n;
5. the batch job (`python -m sdk.batch`, 10^5 samples; dry run 2,000) against the server, samples/s.
Targets checked (docs/bench.md): server n = 256 >= 80% of in-process CUDA, n = 1 p50 within 1 ms of in-process.
A dry run uses the CPU provider and says so in the JSON ("dry_run": true, "provider"); its figures are not GPU
figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.inprocess import feeds_for
from bench.rounds import Load, log
from bench.servers import ROOT, Ganserve
from ganserve.store import sessions

CUDA = "CUDAExecutionProvider"
TARGETS = {"served_vs_inprocess_n256": 0.80, "n1_p50_over_inprocess_ms": 1.0}


class TimeLimit(Exception):
    pass


def gpu_info() -> dict:
    if shutil.which("nvidia-smi") is None:
        return {"gpu": None}
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    return {"gpu": out or None}


def providers() -> list[str]:
    """ONNX Runtime's providers as a fresh process sees them (this one imported onnxruntime before any install)."""
    probe = [sys.executable, "-c", "import onnxruntime as o; print(','.join(o.get_available_providers()))"]
    return subprocess.run(probe, capture_output=True, text=True, check=False).stdout.strip().split(",")


def install_ort_gpu() -> dict:
    """onnxruntime-gpu in place of onnxruntime (both own the `onnxruntime` package, so the CPU one goes first).
    Only on a machine with nvidia-smi: this replaces the environment's ONNX Runtime."""
    if shutil.which("nvidia-smi") is None:
        return {"installed": False, "why": "no nvidia-smi: not a GPU machine"}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "uninstall", "--yes", "--quiet", "onnxruntime"], capture_output=True, timeout=120,
                   check=False)
    r = subprocess.run([*pip, "install", "--quiet", "onnxruntime-gpu"], capture_output=True, text=True,
                       timeout=300, check=False)
    return {"installed": r.returncode == 0, "pip_tail": (r.stdout[-500:] + r.stderr[-500:]).strip()}


def inprocess(onnx_path: Path, manifest: dict, provider: str, n: int, duration: float) -> dict:
    """Calls/s and p50 of one session run, plain (numpy in and out) and with I/O binding (device-resident)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=[provider, "CPUExecutionProvider"])
    f = feeds_for(manifest, n)
    out_name = manifest["graphs"]["generator"]["outputs"][0]["name"]
    device = "cuda" if provider == CUDA else "cpu"
    binding = sess.io_binding()
    for k, v in f.items():
        binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, device, 0))
    binding.bind_output(out_name, device)

    def plain():
        sess.run([out_name], f)

    def bound():
        sess.run_with_iobinding(binding)

    result = {"providers": sess.get_providers()}
    for label, call in (("plain", plain), ("iobinding", bound)):
        for _ in range(3):
            call()
        times, end = [], time.perf_counter() + duration
        while time.perf_counter() < end or len(times) < 3:
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        ms = np.array(times) * 1e3
        result[label] = {"samples_per_s": n * len(ms) / (ms.sum() / 1e3), "p50_ms": float(np.median(ms)),
                         "p99_ms": float(np.percentile(ms, 99)), "calls": len(ms)}
    return result


def batch_job(address: str, model: str, n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-check-batch-") as out:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "sdk.batch", "--model", model, "--n", str(n), "--out", out,
                            "--seed", "1", "--quiet", "--target", address, "--encoding", "uint8"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
        wall = time.perf_counter() - t
    return {"n": n, "rc": r.returncode, "wall_s": wall, "samples_per_s": n / wall if r.returncode == 0 else None,
            "stderr_tail": r.stderr[-400:] if r.returncode else ""}


def check(args: argparse.Namespace) -> dict:
    result: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dry_run": args.dry_run,
                    "model": args.model, "loadavg_start": os.getloadavg(), "cpus": os.cpu_count(), **gpu_info()}

    def save():
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")

    try:
        result["install"] = args.install_report or {"providers": providers()}
        save()
        provider = "CPUExecutionProvider" if args.dry_run else CUDA
        if provider not in ort.get_available_providers():
            result["error"] = f"{provider} not available: {ort.get_available_providers()}"
            return result
        result["provider"] = provider
        folder, manifest = sessions.newest_valid(args.store, args.model)
        onnx_path = folder / manifest["graphs"]["generator"]["file"]
        dur = 0.3 if args.dry_run else 3.0
        result["inprocess"] = {n: inprocess(onnx_path, manifest, provider, n, dur) for n in (1, 256)}
        save()
        server_args = ("--providers", "cpu" if args.dry_run else "cuda")
        with Ganserve(args.store, args=server_args, ready_timeout=180) as server:
            load = Load()
            try:
                target = {"kind": "grpc", "address": server.address, "model": args.model,
                          "num_classes": manifest["num_classes"]}
                served = {}
                for label, n, conc in (("n1", 1, 1), ("n256", 256, 1), ("n1_c32", 1, 32)):
                    served[label] = load({"op": "run", "target": target, "n": n, "concurrency": conc,
                                          "duration": dur, "warmup": 0.2 if args.dry_run else 1.0,
                                          "encoding": "float32"})
                    served[label].pop("latencies_ms", None)
                result["served"] = served
                save()
            finally:
                load.close()
            result["batch_job"] = batch_job(server.address, args.model, 2000 if args.dry_run else 100_000)
        best = {n: max(v["plain"]["samples_per_s"], v["iobinding"]["samples_per_s"])
                for n, v in result["inprocess"].items()}
        s = result["served"]
        result["targets"] = {
            "served_vs_inprocess_n256": {"value": s["n256"].get("samples_per_s", 0) / best[256],
                                         "target": TARGETS["served_vs_inprocess_n256"]},
            "n1_p50_over_inprocess_ms": {"value": s["n1"].get("p50_ms", float("inf"))
                                         - result["inprocess"][1]["plain"]["p50_ms"],
                                         "target": TARGETS["n1_p50_over_inprocess_ms"]}}
        for t in result["targets"].values():
            t["met"] = bool(t["value"] >= t["target"]) if t is result["targets"]["served_vs_inprocess_n256"] \
                else bool(t["value"] <= t["target"])
    except TimeLimit:
        result["error"] = f"time limit of {args.time_limit} s reached; the steps above finished"
    finally:
        result["loadavg_end"] = os.getloadavg()
        save()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU provider, tiny rounds, nothing installed")
    p.add_argument("--no-install", action="store_true", help="do not pip install onnxruntime-gpu")
    p.add_argument("--model", default="gan-mnist")
    p.add_argument("--store", type=Path, default=ROOT / "model_store")
    p.add_argument("--time-limit", type=int, default=540, help="seconds; the run stops and keeps what it has")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "gpu-check.json")
    p.add_argument("--install-report", type=json.loads, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if not (args.dry_run or args.no_install) and CUDA not in providers():
        # install, then run again in a fresh interpreter (this one holds the CPU build), within the same limit
        started, report = time.monotonic(), install_ort_gpu()
        left = max(1, int(args.time_limit - (time.monotonic() - started)))
        os.execv(sys.executable, [sys.executable, "-m", "bench.gpu_check", *argv, "--no-install",
                                  "--time-limit", str(left), "--install-report", json.dumps(report)])

    def expired(*_):
        raise TimeLimit

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(args.time_limit)
    try:
        result = check(args)
    finally:
        signal.alarm(0)
    print(json.dumps({k: result.get(k) for k in ("gpu", "provider", "dry_run", "targets", "error")}, indent=2))
    log(f"wrote {args.json}")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
