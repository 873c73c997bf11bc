"""python -m bench [--quick] [--json out.json] [--markdown out.md] [--store model_store] [--models a,b]

One run measures, on the shipped generators (every non-evaluator model in the store):
  A  in-process ONNX Runtime samples/s at batch 1, 8, 64, 256, 1 and 2 intra-op threads, with achieved
     GFLOP/s against the FLOPs counted from the ONNX graph (bench/flops.py);
  B  torch eager and torch.compile on the same graph and weights (bench/onnx_torch.py);
  C  ganserve end to end over loopback gRPC (`python -m server` in its own process): latency p50/p99 for
     n = 1, 64, 256 next to in-process runs of the same batch; single-sample throughput at concurrency 1, 8,
     32, 64 with batching off (--max-batch-samples 1) and on (defaults); float32 vs uint8 vs PNG;
  D  TorchServe serving the same generator through our .mar (training/torchserve.py), its batching off and
     on, under the same loads (interleaved with C);
  E  SampleStream of a large job (10^6 samples; --quick: 2*10^4) against the in-process ceiling measured
     right before and after it;
  F  the ganserve process's RSS after warm-up and after the load;
  G  the bare Python gRPC ceiling (bench/echo.py: same messages, prebuilt replies, no model) at n = 1 and
     every concurrency, so the gap to in-process splits into what gRPC-in-Python costs and what ganserve adds;
     and the same in grpc-go (bench/goecho.py, n = 1 only, when `make gateway` has built it): the floor of
     any server's network path on this machine, whatever it is written in.
The load comes from a separate process (bench/load.py, Python) and, in the same rounds, from native C clients
(bench/native.py: h2load for gRPC, wrk for HTTP; `--client`), whose own CPU use is reported, as is each server's.
Every comparison is a ratio of contenders measured in the same run, in interleaved rounds (A B A B ...), so
noise from other processes on the machine hits all of them.

Run it under `nice -n 10` on a shared machine. Results: JSON (default bench/results/bench-<time>.json) and
the printed tables (also written as markdown with --markdown).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import report
from bench.inprocess import bench_model
from bench.rounds import Load, log
from bench.sections import (
    run_server_sections,
    same_samples,
    start_optional,
    start_torchserve,
)
from bench.servers import ROOT, Ganserve
from ganserve.store.sessions import newest_valid

OFF_ARGS = ("--max-batch-samples", "1")


def machine() -> dict:
    import onnxruntime
    import psutil

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "load_avg_at_start": os.getloadavg()}
    for mod in ("torch", "grpc", "ts"):
        try:
            info[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            pass
    return info


def generators(store: Path, only: list[str] | None) -> dict[str, tuple[Path, dict]]:
    """name -> (newest valid version folder, manifest) for every generator in the store."""
    found = {}
    for folder in sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            vdir, m = newest_valid(store, folder.name)
        except FileNotFoundError:
            continue
        if m["kind"] != "evaluator" and "generator" in m["graphs"]:
            found[folder.name] = (vdir, m)
    if only:
        missing = [n for n in only if n not in found]
        if missing:
            raise SystemExit(f"models not found (valid) in {store}: {', '.join(missing)}; have {', '.join(found)}")
        found = {n: found[n] for n in only}
    return found


def pick_primary(models: dict[str, tuple[Path, dict]], wanted: str | None) -> str:
    """The model the cross-server comparisons use: --primary, else gan-mnist, else the first
    unconditional image generator, else the first image generator."""
    if wanted:
        return wanted
    if "gan-mnist" in models:
        return "gan-mnist"
    images = [n for n, (_, m) in models.items() if m["data_kind"] == "image"]
    uncond = [n for n in images if not models[n][1]["num_classes"]]
    return (uncond or images or list(models))[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about a minute: short rounds, one round, small job")
    p.add_argument("--json", type=Path, default=None, help="result file (default bench/results/bench-<time>.json)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the printed tables here")
    p.add_argument("--store", type=Path, default=ROOT / "model_store", help="model store to benchmark")
    p.add_argument("--models", default="", help="comma-separated generators (default: all in the store)")
    p.add_argument("--primary", default=None, help="model for the server comparisons (default gan-mnist)")
    p.add_argument("--reference", action="store_true",
                   help="benchmark the reference DCGAN (bench/reference.py, random weights) in a temporary store "
                        "instead of --store")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per comparison")
    p.add_argument("--duration", type=float, default=None, help="seconds per load round")
    p.add_argument("--stream-n", type=int, default=None,
                   help="SampleStream job size (default 10^6, quick 2*10^4; less if it would take > 5 min / 8 s)")
    p.add_argument("--no-torchserve", action="store_true", help="skip TorchServe")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--server-args", default="", help="extra flags for both ganserve servers, e.g. "
                                                     "'--intra-op-threads 2'")
    p.add_argument("--variant", default="", help="also measure a ganserve with proposed changes patched in "
                                                "(bench/variants.py PATCHES); 'none' for none")
    p.add_argument("--variant-args", default="", help="extra flags for the variant server only, e.g. "
                                                     "'--model-runners 1' (the previous default)")
    p.add_argument("--ts-workers", type=int, default=2, help="TorchServe workers per model")
    p.add_argument("--ts-batch", type=int, default=32, help="TorchServe batch size when its batching is on")
    p.add_argument("--ts-delay-ms", type=int, default=5, help="TorchServe max batch delay when batching is on")
    p.add_argument("--client", choices=("both", "python", "native"), default="both",
                   help="load generators for the server sections: the Python grpcio/http.client process "
                        "(bench/load.py), h2load + wrk (bench/native.py; C, ~0.1 cores), or both in the same rounds "
                        "(default; falls back to python when h2load or wrk is not installed)")
    args = p.parse_args(argv)
    from bench.native import available as native_available

    if args.client != "python" and not native_available():
        if args.client == "native":
            raise SystemExit("--client native needs h2load and wrk: apt-get install nghttp2-client wrk")
        log("h2load or wrk not found (apt-get install nghttp2-client wrk): "
            "the server sections use the Python client only")
        args.client = "python"

    # SIGTERM (and SIGINT, which a shell ignores in background jobs) unwind through the `with` blocks below, so
    # the servers started here are stopped; the sections measured so far are already in the JSON (checkpoint)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    quick = args.quick
    rounds = args.rounds or (1 if quick else 2)
    dur = args.duration or (0.8 if quick else 2.5)
    in_rounds, in_round_s = (1, 0.25) if quick else (3, 0.4)
    stream_n = args.stream_n  # default: sized from section A, below
    started = time.time()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    json_path = args.json or ROOT / "bench" / "results" / f"bench-{stamp}.json"
    tmp = Path(tempfile.mkdtemp(prefix="ganserve-bench-"))

    store = args.store
    if args.reference:
        from bench.reference import publish_reference

        store = tmp / "store"
        publish_reference(store)
    models = generators(store, [m for m in args.models.split(",") if m] or None)
    if not models:
        raise SystemExit(f"no valid generator in {store}; train/publish the shipped models first, or run "
                         "`python -m bench --reference` for the reference DCGAN")
    primary = pick_primary(models, args.primary)
    if quick and not args.models:  # a minute: the in-process and per-model sections on the primary model only
        models = {primary: models[primary]}
    pdir, pman = models[primary]
    results: dict = {"started": stamp, "quick": quick, "machine": machine(), "store": str(store),
                     "primary": primary, "settings": {"rounds": rounds, "load_round_s": dur,
                                                      "inprocess_rounds": in_rounds, "inprocess_round_s": in_round_s,
                                                      "stream_n": stream_n, "server_args": args.server_args,
                                                      "clients": args.client,
                                                      "torchserve": {"workers": args.ts_workers,
                                                                     "batch_size": args.ts_batch,
                                                                     "max_batch_delay_ms": args.ts_delay_ms}},
                     "models": {}}
    log(f"bench: {len(models)} generator(s) from {store}; primary {primary}; "
        f"{'quick' if quick else 'full'} run; results -> {json_path}")

    # A + B: in-process engines, nothing else running
    section_s = results["section_s"] = {}
    for name, (vdir, m) in models.items():
        log(f"[A/B] in-process {name}")
        t0 = time.monotonic()
        # torch.compile takes ~45 s for the first batch size on these 2 cores: the primary model only
        compile_it = not quick and not args.no_compile and name == primary
        # the other models: shorter rounds (their curve and engine choice, not the ceiling of the comparisons)
        r_n, r_s = (in_rounds, in_round_s) if name == primary or quick else (2, in_round_s * 0.6)
        results["models"][name] = {"kind": m["kind"], "version": m["version"], "data_kind": m["data_kind"],
                                   "inprocess": bench_model(str(vdir / m["graphs"]["generator"]["file"]), m,
                                                            rounds=r_n, round_s=r_s,
                                                            torch_compile=compile_it, log=log)}
        section_s[f"inprocess/{name}"] = round(time.monotonic() - t0, 1)
    if stream_n is None:
        # 10^6 samples (quick: 20,000), or fewer when the primary's best in-process rate at batch 256 says the
        # job would take more than 5 min (quick: 8 s), so a busy machine does not stretch the run without bound;
        # the table reports the n that ran
        rate = max(s["samples_per_s"] for s in results["models"][primary]["inprocess"]["batches"][256].values())
        full = 20_000 if quick else 1_000_000
        fits = int((8 if quick else 300) * rate)
        stream_n = full if fits >= full else max(4096, fits // 4096 * 4096)
    results["settings"]["stream_n"] = stream_n

    # C, D, E, F: servers in their own processes, the load in another
    extra = tuple(args.server_args.split())
    load = Load(native=args.client != "python")
    ts_server = None
    t_servers = time.monotonic()
    try:
        with Ganserve(store, args=(*OFF_ARGS, *extra), log=tmp / "ganserve-off.log") as off, \
                Ganserve(store, args=extra, log=tmp / "ganserve-on.log") as on, \
                Ganserve(store, log=tmp / "grpc-echo.log", entry=("-m", "bench.echo")) as echo, \
                (Ganserve(store, args=(*extra, *args.variant_args.split()), log=tmp / "ganserve-variant.log",
                          entry=("-m", "bench.variants", args.variant))
                 if args.variant or args.variant_args else contextlib.nullcontext()) as variant, \
                contextlib.ExitStack() as stack:
            goecho = start_optional(stack, Ganserve(store, log=tmp / "grpc-go-echo.log", entry=("-m", "bench.goecho")),
                                    "the bare grpc-go floor (bench/goecho.py; `make gateway` builds it)")
            section_s["start_ganserve"] = round(time.monotonic() - t_servers, 1)
            if not args.no_torchserve:
                t0 = time.monotonic()
                try:
                    ts_server = start_torchserve(store, primary, tmp, args)
                    section_s["start_torchserve"] = round(time.monotonic() - t0, 1)
                except Exception as e:  # noqa: BLE001 - reported; the ganserve sections still run
                    results["torchserve_error"] = f"{type(e).__name__}: {e}"
                    log(f"TorchServe not measured: {results['torchserve_error']}")
            if variant is not None:
                results["variant"] = {"patches": args.variant or "none", "args": args.variant_args,
                                      "same_samples_as_stock": same_samples(on, variant, primary, pman)}
            results["servers"] = {}

            def checkpoint() -> None:  # after each section: an interrupted run keeps what it measured
                json_path.parent.mkdir(parents=True, exist_ok=True)
                json_path.write_text(json.dumps({**results, "partial": True}, indent=1, default=str) + "\n")

            run_server_sections(load, on, off, ts_server, models, primary, pdir, pman, rounds=rounds, dur=dur,
                                stream_n=stream_n, quick=quick, variant=variant, out=results["servers"],
                                checkpoint=checkpoint, echo=echo, goecho=goecho, clients=args.client)
    finally:
        load.close()
        if ts_server is not None:
            ts_server.__exit__(None, None, None)
    results["wall_s"] = time.time() - started
    results["machine"]["load_avg_at_end"] = os.getloadavg()

    results = json.loads(json.dumps(results, default=str))  # keys as in the file (strings), for the report
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")  # first without targets: never lose a run
    results["targets"] = report.targets(results)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    text = report.render(results)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    log(f"wrote {json_path} ({results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
