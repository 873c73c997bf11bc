"""The benchmark's server sections (C–G of python -m bench): latency, throughput, encodings, batching, the stream."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import grpc

from bench import report
from bench.rounds import Load, interleaved, log
from bench.servers import Ganserve, TorchServe
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from training.torchserve import export_mar


def same_samples(a: Ganserve, b: Ganserve, model: str, manifest: dict) -> bool:
    """Whether two servers return bit-identical samples for the same seeds (n = 1, 37, 300)."""
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

