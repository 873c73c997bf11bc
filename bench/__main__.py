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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import report
from bench.inprocess import bench_model
from bench.servers import ROOT, Ganserve, TorchServe, tree_usage
from ganserve.store.sessions import newest_valid

OFF_ARGS = ("--max-batch-samples", "1")


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


class Load:
    """The load generator process (bench/load.py), driven one JSON command at a time; a command with
    `"client": "native"` goes to the native load generators instead (h2load / wrk, bench/native.py)."""

    def __init__(self, native: bool = False):
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.load"], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.native = None
        if native:
            from bench.native import NativeLoad

            self.native = NativeLoad()

    def __call__(self, cmd: dict) -> dict:
        if cmd.get("client") == "native":
            return self.native(cmd) if self.native else {"error": "h2load / wrk not installed"}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited ({self.proc.poll()})")
        return json.loads(line)

    def close(self):
        if self.native is not None:
            self.native.close()
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


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


def interleaved(load: Load, contenders: list[tuple[str, dict, object]], rounds: int, *, usage=None) -> dict:
    """Run each contender's load command once per round, rounds in rotated order; pool the results.

    contenders: (label, load command, server to sample usage of or None)."""
    per = {label: [] for label, _, _ in contenders}
    for r in range(rounds):
        k = r % len(contenders)
        for label, cmd, server in contenders[k:] + contenders[:k]:
            before = server.usage() if server is not None else None
            t0 = time.monotonic()
            res = load(cmd)
            span = time.monotonic() - t0
            if server is not None and "error" not in res:
                after = server.usage()
                # the server's CPU over the whole call (warm-up at the same load included) divided by the call's
                # length: dividing by the measured window alone would overstate it by the warm-up's share
                res["server_cpu_cores"] = (after["cpu_s"] - before["cpu_s"]) / max(span, 1e-9)
            per[label].append(res)
    return {label: pool(results) for label, results in per.items()}


def pool(results: list[dict]) -> dict:
    ok = [r for r in results if r.get("requests")]
    errors = sum(r.get("errors", 0) for r in results)
    first_error = next((r.get("first_error") or r.get("error") for r in results
                        if r.get("first_error") or r.get("error")), "")
    if not ok:
        return {"error": first_error or "no requests completed", "errors": errors}
    lat = np.concatenate([r["latencies_ms"] for r in ok])
    med = lambda key: float(np.median([r[key] for r in ok if key in r]))  # noqa: E731
    out = {"samples_per_s": med("samples_per_s"), "req_per_s": med("req_per_s"),
           "rounds_samples_per_s": [round(r["samples_per_s"], 1) for r in ok],
           "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
           "mean_ms": float(lat.mean()), "requests": int(sum(r["requests"] for r in ok)), "errors": errors,
           "first_error": first_error, "bytes_per_response": ok[0]["bytes_per_response"],
           "load_cpu_cores": med("load_cpu_cores"), "load_cpu_us_per_req": med("load_cpu_us_per_req")}
    if any("server_cpu_cores" in r for r in ok):
        out["server_cpu_cores"] = med("server_cpu_cores")
        # CPU the server spent per request: robust to other processes taking the cores (unlike wall time)
        out["server_cpu_ms_per_req"] = float(np.median([1e3 * r["server_cpu_cores"] / r["req_per_s"] for r in ok
                                                        if "server_cpu_cores" in r]))
    return out


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
    concurrencies = (1, 8, 32, 64)
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


def same_samples(a: Ganserve, b: Ganserve, model: str, manifest: dict) -> bool:
    """Whether two servers return bit-identical samples for the same seeds (n = 1, 37, 300)."""
    import grpc

    from protos.ganserve.v1 import generator_pb2 as pb
    from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc

    replies = []
    for server in (a, b):
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.GeneratorServiceStub(ch)
            out = []
            for n, seed in ((1, 3), (37, 4), (300, 5)):
                if manifest["num_classes"]:
                    r = stub.SampleConditional(pb.SampleConditionalRequest(model=model, n=n, seed=seed, labels=[1]),
                                               timeout=120)
                else:
                    r = stub.Sample(pb.SampleRequest(model=model, n=n, seed=seed), timeout=120)
                out.append(r.samples.data)
            replies.append(out)
    return replies[0] == replies[1]


def start_optional(stack: contextlib.ExitStack, server: Ganserve, what: str) -> Ganserve | None:
    """`server` started inside `stack`, or None (logged) when it cannot start: a contender the run can do without."""
    try:
        return stack.enter_context(server)
    except Exception as e:  # noqa: BLE001 - reported; the other contenders are measured anyway
        log(f"{what}: not measured ({type(e).__name__}: {e})")
        return None


def start_torchserve(store: Path, primary: str, tmp: Path, args) -> TorchServe:
    from training.torchserve import export_mar

    mar_dir = tmp / "mar"
    export_mar(store, primary, mar_dir, name="ts-unbatched", workers=args.ts_workers)
    export_mar(store, primary, mar_dir, name="ts-batched", workers=args.ts_workers, batch_size=args.ts_batch,
               max_batch_delay_ms=args.ts_delay_ms)
    log("starting TorchServe")
    ts = TorchServe(mar_dir, {"ts-unbatched": "ts-unbatched.mar", "ts-batched": "ts-batched.mar"},
                    workdir=tmp / "torchserve")
    return ts.__enter__()


def run_server_sections(load: Load, on: Ganserve, off: Ganserve, ts: TorchServe | None, models: dict, primary: str,
                        pdir: Path, pman: dict, *, rounds: int, dur: float, stream_n: int, quick: bool,
                        variant: Ganserve | None = None, out: dict | None = None, checkpoint=lambda: None,
                        echo: Ganserve | None = None, goecho: Ganserve | None = None,
                        clients: str = "python") -> dict:
    """`echo`: bench/echo.py, the bare Python gRPC ceiling (prebuilt replies), measured next to ganserve;
    `goecho`: bench/goecho.py, the same in grpc-go (n = 1 only): the floor of any server's network path.
    `clients`: "python", "native" (h2load) or "both"; every server contender runs under each chosen client in
    the same interleaved rounds, the native ones labelled with the suffix " [native]" (report.NATIVE)."""
    out = {} if out is None else out
    out["section_s"] = {}
    clock = [time.monotonic()]

    def done(section: str) -> None:  # wall seconds per section, so a slow run shows where the time went
        now = time.monotonic()
        out["section_s"][section] = round(now - clock[0], 1)
        clock[0] = now
        checkpoint()

    k = pman["num_classes"]
    onnx = str(pdir / pman["graphs"]["generator"]["file"])
    grpc_t = lambda server, model=primary, m=pman: {"kind": "grpc", "address": server.address,  # noqa: E731
                                                    "model": model, "num_classes": m["num_classes"]}
    inproc_t = lambda threads, path=onnx, m=pman: {"kind": "inproc", "onnx": path, "threads": threads,  # noqa: E731
                                                   "latent_dim": m["latent_dim"], "num_classes": m["num_classes"]}
    ts_t = lambda name: {"kind": "http", "url": ts.predictions_url(name), "num_classes": k}  # noqa: E731
    run = lambda target, n=1, c=1, enc="float32", d=dur, w=0.3: {"op": "run", "target": target,  # noqa: E731
                                                                 "n": n, "concurrency": c, "duration": d,
                                                                 "warmup": w, "encoding": enc}

    def clients_of(contenders: list) -> list:
        """Each server contender under the chosen clients (in-process ones have no client: kept as they are)."""
        out_ = []
        for label, cmd, server in contenders:
            if cmd["target"]["kind"] == "inproc":
                out_.append((label, cmd, server))
                continue
            if clients in ("python", "both"):
                out_.append((label, cmd, server))
            if clients in ("native", "both"):
                out_.append((label + report.NATIVE, {**cmd, "client": "native"}, server))
        return out_

    # warm up every server and model once (sessions, connections), then RSS after warm-up
    for name, (_, m) in models.items():
        for server in (on, off):
            res = load(run(grpc_t(server, name, m), n=8, d=0.3))
            if res.get("errors"):
                log(f"  warm-up {name} on {server.address}: {res.get('first_error')}")
    out["rss_after_warmup_mb"] = {"on": on.usage()["rss"] / 2**20, "off": off.usage()["rss"] / 2**20}
    if ts is not None:
        for name in ("ts-unbatched", "ts-batched"):
            load(run(ts_t(name), n=1, c=4, d=0.3))
        out["torchserve_rss_after_warmup_mb"] = ts.usage()["rss"] / 2**20
    log(f"[F] ganserve RSS after warm-up: {out['rss_after_warmup_mb']['on']:.0f} MB")
    done("warmup")

    # C: latency for n = 1, 64, 256 against in-process runs of the same batch (same loop, same process)
    out["latency"] = {}
    for n in (1, 64, 256):
        log(f"[C] latency n={n}")
        contenders = [("inproc/t1", run(inproc_t(1), n=n), None), ("inproc/t2", run(inproc_t(2), n=n), None),
                      ("ganserve", run(grpc_t(on), n=n), on)]
        if n > 1:
            contenders.insert(2, ("inproc/2x1", run(inproc_t("2x1"), n=n), None))
        if ts is not None:
            contenders.append(("torchserve", run(ts_t("ts-unbatched"), n=n), ts))
        if variant is not None:
            contenders.append(("ganserve-variant", run(grpc_t(variant), n=n), variant))
        if echo is not None and n == 1:
            contenders.append(("grpc-echo", run(grpc_t(echo), n=n), echo))
        if goecho is not None and n == 1:
            contenders.append(("grpc-go-echo", run(grpc_t(goecho), n=n), goecho))
        out["latency"][n] = interleaved(load, clients_of(contenders), rounds)
    done("latency")

    # C + D: single-sample throughput vs concurrency, batching off and on, ganserve and TorchServe
    out["throughput"] = {}
    for c in (1, 8, 32, 64):
        log(f"[C/D] single-sample requests, concurrency {c}")
        contenders = [("ganserve/off", run(grpc_t(off), c=c), off), ("ganserve/on", run(grpc_t(on), c=c), on)]
        if ts is not None:
            contenders += [("torchserve/off", run(ts_t("ts-unbatched"), c=c), ts),
                           ("torchserve/on", run(ts_t("ts-batched"), c=c), ts)]
        if variant is not None:
            contenders.append(("ganserve-variant/on", run(grpc_t(variant), c=c), variant))
        if echo is not None:
            contenders.append(("grpc-echo", run(grpc_t(echo), c=c), echo))
        if goecho is not None:
            contenders.append(("grpc-go-echo", run(grpc_t(goecho), c=c), goecho))
        if c == 32:  # the in-process best, interleaved with the comparison that is judged against it
            contenders += [("inproc-b64/t1", run(inproc_t(1), n=64), None),
                           ("inproc-b64/t2", run(inproc_t(2), n=64), None),
                           ("inproc-b64/2x1", run(inproc_t("2x1"), n=64), None)]
        out["throughput"][c] = interleaved(load, clients_of(contenders), rounds)
    done("throughput")

    # C: encodings
    log("[C] encodings n=64")
    out["encoding"] = interleaved(load, clients_of([(enc, run(grpc_t(on), n=64, enc=enc), on)
                                                    for enc in ("float32", "uint8", "png")]), rounds)
    done("encoding")

    # batching gain per shipped generator (concurrency 32), to set against its in-process batch curve
    out["batching_by_model"] = {}
    for name, (_, m) in models.items():
        log(f"[C] batching gain {name}")
        out["batching_by_model"][name] = interleaved(
            load, clients_of([("off", run(grpc_t(off, name, m), c=32, d=dur / 2 if not quick else dur), off),
                              ("on", run(grpc_t(on, name, m), c=32, d=dur / 2 if not quick else dur), on)]), rounds)
    done("batching_by_model")

    # E: SampleStream job between two in-process ceiling measurements at the stream's chunk size
    chunk = 4096
    log(f"[E] SampleStream of {stream_n} samples (chunk {chunk})")
    # sessions are warm (latency section); one chunk-sized run takes seconds, so no warm-up call here
    before = {t: load(run(inproc_t(t), n=chunk, d=1.0, w=0.0)) for t in (1, 2, "2x1")}
    stream = {}
    for enc in ("uint8",):
        u0 = on.usage()
        res = load({"op": "stream", "target": grpc_t(on), "n": stream_n, "chunk": chunk, "encoding": enc})
        u1 = on.usage()
        if "error" not in res:
            res["server_cpu_cores"] = (u1["cpu_s"] - u0["cpu_s"]) / res["wall_s"]
        stream[enc] = res
    after = {t: load(run(inproc_t(t), n=chunk, d=1.0, w=0.0)) for t in (1, 2, "2x1")}
    out["stream"] = {"n": stream_n, "chunk": chunk, "results": stream,
                     "ceiling_before": {t: r.get("samples_per_s") for t, r in before.items()},
                     "ceiling_after": {t: r.get("samples_per_s") for t, r in after.items()}}
    done("stream")

    # F: memory after the load
    out["rss_after_load_mb"] = {"on": on.usage()["rss"] / 2**20, "off": off.usage()["rss"] / 2**20}
    if ts is not None:
        out["torchserve_rss_after_load_mb"] = ts.usage()["rss"] / 2**20
    log(f"[F] ganserve RSS after load: {out['rss_after_load_mb']['on']:.0f} MB")
    return out


if __name__ == "__main__":
    sys.exit(main())
