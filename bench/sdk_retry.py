"""The SDK's retries: its own loop against gRPC's built-in retry policy (service config `retryPolicy`), on the same
faults. Prints a table and writes JSON (docs/sdk_retry.json); docs/sdk.md, "Retries", reads it.

    python -m bench.sdk_retry [--calls 200] [--out docs/sdk_retry.json]

Faults, each against a real grpc server on localhost (a stand-in GeneratorService whose ListModels fails as told):
- flaky:     each call's first 2 attempts fail UNAVAILABLE, the 3rd succeeds (3 retries allowed)
- busy:      first attempt RESOURCE_EXHAUSTED, then success
- down:      every attempt fails UNAVAILABLE (4 attempts allowed): how long until the error, which error
- late:      nothing listens; a server starts 0.7 s later; the call has 10 s
- internal:  INTERNAL is not retried (1 attempt)
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from sdk import Client, GanserveError


class Flaky(pb_grpc.GeneratorServiceServicer):
    """ListModels fails the first `fail` attempts of each call (calls told apart by their x-call metadata)."""

    def __init__(self, code: grpc.StatusCode, fail: int):
        self.code, self.fail, self.attempts, self.lock = code, fail, {}, threading.Lock()

    def ListModels(self, request, context):
        key = dict(context.invocation_metadata()).get("x-call", "")
        with self.lock:
            self.attempts[key] = self.attempts.get(key, 0) + 1
            n = self.attempts[key]
        if n <= self.fail:
            context.abort(self.code, f"attempt {n} fails")
        return pb.ListModelsResponse()


def serve(servicer, port: int = 0):
    server = grpc.server(futures.ThreadPoolExecutor(8))
    pb_grpc.add_GeneratorServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


def client(kind: str, target: str, retries: int, timeout: float) -> Client:
    """"ours": the SDK's loop as it stands; "builtin": one attempt from our loop, retries by gRPC's policy."""
    if kind == "ours":
        return Client(target, retries=retries, timeout=timeout)
    c = Client(target, retries=0, timeout=timeout)
    c._channel.close()
    c._channel = grpc.insecure_channel(target, c._s.options + [("grpc.service_config", service_config(retries))])
    c._stub = pb_grpc.GeneratorServiceStub(c._channel)
    return c


def service_config(retries: int) -> str:
    """gRPC's retry policy with the SDK's numbers: same codes, same first backoff and cap (gRFC A6: at most 5
    attempts; the pause before attempt k is uniform in [0, min(max, initial * multiplier^(k-1))], as ours)."""
    from sdk import _constants as C

    return json.dumps({"methodConfig": [{
        "name": [{"service": "ganserve.v1.GeneratorService"}],
        "retryPolicy": {"maxAttempts": min(5, retries + 1), "initialBackoff": f"{C.BACKOFF_INITIAL_S}s",
                        "maxBackoff": f"{C.BACKOFF_MAX_S}s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}}]})


def call(c: Client, key: str, server: Flaky | None) -> dict:
    t0 = time.perf_counter()
    c._s.metadata = (("x-call", key),)
    try:
        c.list_models()
        outcome = "OK"
    except GanserveError as e:
        outcome = e.code.name
    return {"ms": 1000 * (time.perf_counter() - t0), "outcome": outcome,
            "attempts": server.attempts.get(key, 0) if server else None}


def summarize(rows: list[dict]) -> dict:
    ms = sorted(r["ms"] for r in rows)
    outcomes = {o: sum(r["outcome"] == o for r in rows) for o in sorted({r["outcome"] for r in rows})}
    attempts = [r["attempts"] for r in rows if r["attempts"] is not None]
    return {"calls": len(rows), "outcomes": outcomes, "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2),
            "mean_attempts": round(statistics.mean(attempts), 2) if attempts else None}


def scenario(name: str, kind: str, calls: int) -> dict:
    if name == "late":
        rows = []
        for i in range(max(3, calls // 40)):
            with socket_port() as port:
                pass
            holder = {}
            timer = threading.Timer(0.7, lambda: holder.update(s=serve(Flaky(grpc.StatusCode.OK, 0), port)[0]))
            timer.start()
            c = client(kind, f"127.0.0.1:{port}", retries=100 if kind == "ours" else 4, timeout=10)
            rows.append(call(c, f"late{i}", None))
            timer.join()
            holder["s"].stop(0)
            c.close()
        return summarize(rows)
    code, fail, retries = {"flaky": (grpc.StatusCode.UNAVAILABLE, 2, 3),
                           "busy": (grpc.StatusCode.RESOURCE_EXHAUSTED, 1, 3),
                           "down": (grpc.StatusCode.UNAVAILABLE, 99, 3),
                           "internal": (grpc.StatusCode.INTERNAL, 99, 3)}[name]
    servicer = Flaky(code, fail)
    server, port = serve(servicer)
    c = client(kind, f"127.0.0.1:{port}", retries=retries, timeout=5)
    rows = [call(c, f"{name}{i}", servicer) for i in range(calls if name != "down" else max(10, calls // 4))]
    c.close()
    server.stop(0)
    return summarize(rows)


class socket_port:
    """A free port number (bound, then released for the late server)."""

    def __enter__(self):
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc):
        self.s.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("docs/sdk_retry.json"))
    a = p.parse_args(argv)
    results = {name: {kind: scenario(name, kind, a.calls) for kind in ("ours", "builtin")}
               for name in ("flaky", "busy", "down", "late", "internal")}
    print(f"{'fault':<9} {'retries by':<8} {'outcomes':<28} {'attempts':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for name, by in results.items():
        for kind, r in by.items():
            print(f"{name:<9} {kind:<8} {json.dumps(r['outcomes']):<28} {str(r['mean_attempts']):>8} "
                  f"{r['p50_ms']:>8} {r['p95_ms']:>8}")
    a.out.write_text(json.dumps({"grpcio": grpc.__version__, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
