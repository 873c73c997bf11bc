"""The load generator: a separate process, driven over stdin/stdout with one JSON command per line, so its
own CPU use is measured apart from the server's and it keeps its channels warm between rounds.

    python -m bench.load      (the orchestrator in bench/__main__.py starts it; not meant for people)

Commands (one JSON object per line; one JSON reply per line):
    {"op": "run", "target": {...}, "n": 1, "concurrency": 8, "duration": 2.0, "warmup": 0.3,
     "encoding": "float32" | "uint8" | "png"}
        closed loop: `concurrency` threads each send a request as soon as the previous one returns, for
        `duration` seconds after `warmup`; every request has its own seed.
    {"op": "stream", "target": {...grpc...}, "n": 100000, "chunk": 4096, "encoding": "uint8"}
        one SampleStream of n samples, read to the end.
    {"op": "quit"}

Targets:
    {"kind": "grpc", "address": "127.0.0.1:50051", "model": "gan-mnist", "num_classes": 0}
        ganserve Sample (SampleConditional with label i % num_classes for conditional models)
    {"kind": "grpc-v2", "address": "127.0.0.1:50051", "model": "gan-mnist", "num_classes": 0}
        ganserve over the Open Inference Protocol: ModelInfer with seed, n (and labels [i % num_classes]) as raw
        bytes, the samples back as raw bytes (the request tritonclient's gRPC client sends); float32 or uint8
    {"kind": "http", "url": "http://127.0.0.1:8080/predictions/gan-mnist", "num_classes": 0}
        TorchServe through our handler (training/torchserve.py): POST {"n", "seed"[, "labels"]}
    {"kind": "inproc", "onnx": "path", "threads": 1, "latent_dim": 100, "num_classes": 0}
        ONNX Runtime in this process on pre-made inputs: the in-process ceiling under the same loop;
        threads "2x1": each call's batch in two halves on two 1-thread runs at once (bench/inprocess.SplitRun)

Each reply: requests, samples, errors (+ first_error), wall_s, req_per_s, samples_per_s, latency percentiles
in ms, bytes per response, and this process's CPU seconds (user + system, getrusage) over the window.
"""

from __future__ import annotations

import http.client
import json
import resource
import sys
import threading
import time
import urllib.parse

import numpy as np

ENCODINGS = {"float32": 1, "uint8": 2, "png": 3}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class GrpcTarget:
    def __init__(self, spec: dict, concurrency: int):
        import grpc

        from protos.ganserve.v1 import generator_pb2 as pb
        from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc

        self.pb, self.spec = pb, spec
        # One HTTP/2 connection per 8 client threads: a few connections, as several client processes would use.
        opts = [("grpc.max_receive_message_length", 256 << 20), ("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.insecure_channel(spec["address"], options=opts)
                         for _ in range(max(1, (concurrency + 7) // 8))]
        self.stubs = [pb_grpc.GeneratorServiceStub(c) for c in self.channels]

    def call(self, worker: int, seed: int, n: int, encoding: str) -> int:
        pb, stub = self.pb, self.stubs[worker % len(self.stubs)]
        k = self.spec.get("num_classes", 0)
        common = dict(model=self.spec["model"], n=n, seed=seed, encoding=ENCODINGS[encoding])
        if k:
            reply = stub.SampleConditional(pb.SampleConditionalRequest(labels=[seed % k], **common), timeout=60)
        else:
            reply = stub.Sample(pb.SampleRequest(**common), timeout=60)
        got = len(reply.png) if encoding == "png" else (reply.samples.shape[0] if reply.samples.shape else 0)
        if got != n:
            raise RuntimeError(f"asked for {n} samples, got {got}")
        return reply.ByteSize()

    def stream(self, n: int, chunk: int, encoding: str, seed: int) -> tuple[int, int]:
        pb = self.pb
        k = self.spec.get("num_classes", 0)
        req = pb.SampleStreamRequest(model=self.spec["model"], n=n, seed=seed, chunk_size=chunk,
                                     encoding=ENCODINGS[encoding], labels=[3] if k else [])
        samples = nbytes = 0
        for c in self.stubs[0].SampleStream(req, timeout=3600):
            samples += len(c.png) if encoding == "png" else c.samples.shape[0]
            nbytes += len(c.samples.data) + sum(len(p) for p in c.png)
        return samples, nbytes

    def close(self):
        for c in self.channels:
            c.close()


class GrpcV2Target(GrpcTarget):
    def __init__(self, spec: dict, concurrency: int):
        super().__init__(spec, concurrency)
        from protos.inference import grpc_predict_v2_pb2 as v2
        from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc

        self.v2, self.stubs = v2, [v2_grpc.GRPCInferenceServiceStub(c) for c in self.channels]

    def call(self, worker: int, seed: int, n: int, encoding: str) -> int:
        req = self.v2.ModelInferRequest(model_name=self.spec["model"])
        inputs = {"seed": [seed], "n": [n]}
        k = self.spec.get("num_classes", 0)
        if k:
            inputs["labels"] = [seed % k]
        for name, values in inputs.items():
            req.inputs.add(name=name, datatype="INT64", shape=[len(values)])
            req.raw_input_contents.append(np.asarray(values, np.int64).tobytes())
        req.parameters["samples_datatype"].string_param = "UINT8" if encoding == "uint8" else "FP32"
        reply = self.stubs[worker % len(self.stubs)].ModelInfer(req, timeout=60)
        got = reply.outputs[0].shape[0] if reply.outputs else 0
        if got != n:
            raise RuntimeError(f"asked for {n} samples, got {got}")
        return reply.ByteSize()


class HttpTarget:
    def __init__(self, spec: dict, concurrency: int):
        self.spec = spec
        u = urllib.parse.urlsplit(spec["url"])
        self.host, self.port, self.path = u.hostname, u.port, u.path
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        return conn

    def call(self, worker: int, seed: int, n: int, encoding: str) -> int:
        k = self.spec.get("num_classes", 0)
        body = {"n": n, "seed": seed, "encoding": encoding}
        if k:
            body["labels"] = [seed % k]
        conn = self._conn()
        try:
            conn.request("POST", self.path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self.local.conn = None
            raise
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        return len(data)

    def close(self):
        pass


class InprocTarget:
    """ONNX Runtime in this process; inputs are made before the timed loop (the strict ceiling)."""

    def __init__(self, spec: dict, concurrency: int):
        from bench.inprocess import SplitRun, ort_session

        threads = spec.get("threads", 1)
        self.session = ort_session(spec["onnx"], 1 if threads == "2x1" else int(threads))
        self.runner = SplitRun(self.session) if threads == "2x1" else self.session
        self.names = [i.name for i in self.session.get_inputs()]
        self.spec, self.feeds = spec, {}

    def _feeds(self, n: int) -> dict:
        if n not in self.feeds:
            rng = np.random.default_rng(n)
            f = {self.names[0]: rng.standard_normal((n, self.spec["latent_dim"]), dtype=np.float32)}
            k = self.spec.get("num_classes", 0)
            if k:
                f[self.names[1]] = np.eye(k, dtype=np.float32)[np.arange(n) % k]
            self.feeds[n] = f
        return self.feeds[n]

    def call(self, worker: int, seed: int, n: int, encoding: str) -> int:
        return self.runner.run(None, self._feeds(n))[0].nbytes

    def close(self):
        pass


TARGETS = {"grpc": GrpcTarget, "grpc-v2": GrpcV2Target, "http": HttpTarget, "inproc": InprocTarget}


def run(target, *, n: int, concurrency: int, duration: float, warmup: float, encoding: str) -> dict:
    seed_lock = threading.Lock()
    next_seed = [int(time.time_ns() % 1_000_000_007) * 1000]
    records: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
    sizes, failed, errors = [0] * concurrency, [0] * concurrency, []
    start = time.perf_counter()
    t0, t1 = start + warmup, start + warmup + duration
    marks = {}
    barrier = threading.Barrier(concurrency + 1)

    def worker(w: int):
        barrier.wait()
        while True:
            now = time.perf_counter()
            # every worker records at least one request (slow large batches), unless it only gets errors
            if now >= t1 and (records[w] or failed[w]):
                return
            with seed_lock:
                seed = next_seed[0]
                next_seed[0] += 1
            try:
                size = target.call(w, seed, n, encoding)
            except Exception as e:  # noqa: BLE001 - counted and reported, the loop goes on
                failed[w] += 1
                if len(errors) < 1000:
                    errors.append(f"{type(e).__name__}: {e}")
                time.sleep(0.001)
                continue
            end = time.perf_counter()
            if now >= t0:
                records[w].append((now, end))
                sizes[w] = size

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    while time.perf_counter() < t0:
        time.sleep(0.001)
    marks["cpu0"] = _cpu()
    for t in threads:
        t.join()
    cpu = _cpu() - marks["cpu0"]
    rec = [r for rs in records for r in rs]
    if not rec:
        return {"requests": 0, "errors": len(errors), "first_error": errors[0] if errors else "no requests"}
    lat = np.array([e - s for s, e in rec]) * 1e3
    wall = max(e for _, e in rec) - min(s for s, _ in rec)
    return {
        "requests": len(rec), "samples": len(rec) * n, "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "wall_s": wall, "req_per_s": len(rec) / wall, "samples_per_s": len(rec) * n / wall,
        "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()), "max_ms": float(lat.max()),
        "latencies_ms": [round(float(x), 4) for x in lat],
        "bytes_per_response": max(sizes), "load_cpu_s": cpu, "load_cpu_cores": cpu / wall,
        "load_cpu_us_per_req": 1e6 * cpu / len(rec),
    }


def main() -> int:
    targets: dict[str, object] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            if cmd["op"] == "quit":
                break
            spec = cmd["target"]
            key = json.dumps(spec, sort_keys=True) + f"/{cmd.get('concurrency', 1)}"
            if key not in targets:
                targets[key] = TARGETS[spec["kind"]](spec, cmd.get("concurrency", 1))
            target = targets[key]
            if cmd["op"] == "run":
                out = run(target, n=cmd["n"], concurrency=cmd["concurrency"], duration=cmd["duration"],
                          warmup=cmd.get("warmup", 0.3), encoding=cmd.get("encoding", "float32"))
            elif cmd["op"] == "stream":
                c0, w0 = _cpu(), time.perf_counter()
                samples, nbytes = target.stream(cmd["n"], cmd["chunk"], cmd.get("encoding", "uint8"),
                                                cmd.get("seed", 1))
                wall, cpu = time.perf_counter() - w0, _cpu() - c0
                out = {"samples": samples, "bytes": nbytes, "wall_s": wall, "samples_per_s": samples / wall,
                       "load_cpu_s": cpu, "load_cpu_cores": cpu / wall}
            else:
                raise ValueError(f"unknown op {cmd['op']!r}")
        except Exception as e:  # noqa: BLE001 - reported to the orchestrator, which decides
            out = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    for t in targets.values():
        t.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
