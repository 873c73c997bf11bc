"""The soak's client processes and probes (bench/soak.py): threads sending the mix (bench/soak_mix.py) or
Sample back to back, an RSS sampler and a health probe."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from bench.servers import tree_usage
from bench.soak_mix import DEADLINE_S, UNREAD_S, Mix, Req

BACKOFF_S = 0.02
MAX_MESSAGE = 64 << 20


def _channels(target: str, threads: int):
    import grpc

    from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc

    opts = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(target, options=opts) for _ in range(max(1, (threads + 7) // 8))]
    return channels, [pb_grpc.GeneratorServiceStub(c) for c in channels]


def call(stub, channel, req: Req) -> tuple[str, int]:
    """(status name, response messages) of one call; never raises for an RPC failure."""
    import grpc

    try:
        if req.how == "raw":
            raw = channel.unary_unary(f"/ganserve.v1.GeneratorService/{req.method}")
            raw(req.request, timeout=req.timeout)
            return "OK", 1
        if req.how == "unread":  # a stream nobody reads for a while, then given up
            stream = getattr(stub, req.method)(req.request, timeout=req.timeout)
            done = threading.Event()
            stream.add_done_callback(lambda _: done.set())
            if not done.wait(UNREAD_S):
                stream.cancel()
            return stream.code().name, 0
        if req.method == "SampleStream":
            return "OK", sum(1 for _ in getattr(stub, req.method)(req.request, timeout=req.timeout))
        getattr(stub, req.method)(req.request, timeout=req.timeout)
        return "OK", 1
    except grpc.RpcError as e:
        return e.code().name, 0


def _run_threads(client, job: dict, channels) -> None:
    """client(i) on job["threads"] threads until they finish (each stops by job["stop_at"]), then close."""
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(job["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(job["stop_at"] - time.time() + DEADLINE_S + 5)
    for c in channels:
        c.close()


def mix_worker(job: dict) -> dict:
    """One client process: `threads` clients sending the mix back to back until `stop_at` (wall clock);
    records calls that end after `record_from`."""
    channels, stubs = _channels(job["target"], job["threads"])
    images = {k: np.asarray(v, np.float32) for k, v in job["images"].items()}
    out: dict[str, dict] = {}
    unexpected: list[str] = []
    lock = threading.Lock()

    def client(i: int):
        mix = Mix(job["roles"], images, seed=job["seed"] * 1000 + i, hostile=job.get("hostile", True))
        k = i % len(stubs)
        while time.time() < job["stop_at"]:
            req = mix.next()
            t0 = time.perf_counter()
            code, _ = call(stubs[k], channels[k], req)
            ms = 1000 * (time.perf_counter() - t0)
            if time.time() < job["record_from"]:
                continue
            with lock:
                rec = out.setdefault(req.label, {"ms": [], "codes": {}, "expected": sorted(req.expected)})
                rec["ms"].append(round(ms, 3))
                rec["codes"][code] = rec["codes"].get(code, 0) + 1
                if code not in req.expected and len(unexpected) < 50:
                    unexpected.append(f"{req.label}: {code} (expected {' or '.join(sorted(req.expected))})")

    _run_threads(client, job, channels)
    return {"by_label": out, "unexpected": unexpected}


def sample_worker(job: dict) -> dict:
    """One client process of the overload phases: Sample n=8 back to back; a refused client waits BACKOFF_S."""
    from protos.ganserve.v1 import generator_pb2 as pb

    channels, stubs = _channels(job["target"], job["threads"])
    ok_ms, refused_ms, other = [], [], {}
    lock = threading.Lock()

    def client(i: int):
        k = i % len(stubs)
        seed = job["seed"] * 100_000 + i * 10_000
        while time.time() < job["stop_at"]:
            seed += 1
            t0 = time.perf_counter()
            code, _ = call(stubs[k], channels[k], Req("Sample", "Sample", pb.SampleRequest(model=job["model"], n=8,
                                                                                          seed=seed), frozenset()))
            ms = 1000 * (time.perf_counter() - t0)
            record = time.time() >= job["record_from"]
            with lock:
                if record and code == "OK":
                    ok_ms.append(ms)
                elif record and code == "RESOURCE_EXHAUSTED":
                    refused_ms.append(ms)
                elif record:
                    other[code] = other.get(code, 0) + 1
            if code == "RESOURCE_EXHAUSTED":
                time.sleep(BACKOFF_S)

    _run_threads(client, job, channels)
    return {"ok_ms": ok_ms, "refused_ms": refused_ms, "other": other}


def _split(total: int, procs: int) -> list[int]:
    procs = max(1, min(procs, total))
    return [total // procs + (1 if i < total % procs else 0) for i in range(procs)]


def run_clients(pool: ProcessPoolExecutor, fn, target: str, clients: int, procs: int, seconds: float,
                record_after: float, **extra) -> list[dict]:
    start = time.time() + 1.0  # let every process start and connect first
    jobs = [{"target": target, "threads": n, "seed": i + 1, "stop_at": start + seconds,
             "record_from": start + record_after, **extra} for i, n in enumerate(_split(clients, procs))]
    return list(pool.map(fn, jobs))


def pct(ms: list[float]) -> dict:
    if not ms:
        return {"count": 0}
    a = np.asarray(ms)
    return {"count": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


class RssSampler(threading.Thread):
    def __init__(self, pid: int, period: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.period, self.samples = pid, period, []
        self._done = threading.Event()

    def run(self):
        while not self._done.wait(self.period):
            self.samples.append((time.time(), tree_usage(self.pid)["rss"]))

    def stop(self) -> list[tuple[float, int]]:
        self._done.set()
        self.join(5)
        return self.samples


class HealthProbe(threading.Thread):
    """Health/Check every `period` s over its own connection: statuses and latencies."""

    def __init__(self, target: str, period: float = 0.1):
        super().__init__(daemon=True)
        self.target, self.period = target, period
        self.results: list[tuple[str, float]] = []
        self._done = threading.Event()

    def run(self):
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not self._done.wait(self.period):
                t0 = time.perf_counter()
                try:
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(
                        stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
                except grpc.RpcError as e:
                    status = e.code().name
                self.results.append((status, 1000 * (time.perf_counter() - t0)))

    def stop(self) -> list[tuple[str, float]]:
        self._done.set()
        self.join(5)
        return self.results
