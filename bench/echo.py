"""The bare Python gRPC ceiling: GeneratorService answering Sample / SampleConditional with a prebuilt reply.

    python -m bench.echo --address 127.0.0.1:50099 --store model_store      (bench/__main__.py starts it)

Same grpcio, same sync server with a thread pool, same messages and reply sizes as ganserve (n samples of
the model's output shape, float32 zeros, built once per (model, n)), but no model, no validation, no
batching, no telemetry. What it serves is meaningless; how fast it serves is the most any Python gRPC
server can do on this machine under the same load generator, so the benchmark can say how much of the gap to
the in-process ceiling is gRPC-in-Python itself and how much is ganserve's own work.

Flags the benchmark passes to every server (--reload-interval-s, --log-level, ...) are accepted and ignored.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc


def output_shapes(store: Path) -> dict[str, list[int]]:
    """{name and name@version: output shape} for every model in the store (the newest version for bare names)."""
    shapes: dict[str, list[int]] = {}
    for manifest in sorted(Path(store).glob("*/*/manifest.json"), key=lambda p: (p.parent.parent.name,
                                                                                  int(p.parent.name))):
        m = json.loads(manifest.read_text())
        shape = list(m.get("output", {}).get("shape") or [])
        name, version = manifest.parent.parent.name, manifest.parent.name
        shapes[name] = shapes[f"{name}@{version}"] = shape
    return shapes


def prebuilt_reply(model: str, n: int, shape: list[int]) -> pb.SampleResponse:
    """What the echo servers answer: n float32 zero samples of the model's output shape (ganserve's reply size)."""
    return pb.SampleResponse(model=model, seed=1, samples=tensors.from_array(np.zeros((n, *shape), np.float32)))


class Echo(pb_grpc.GeneratorServiceServicer):
    def __init__(self, shapes: dict[str, list[int]]):
        self.shapes = shapes
        self.replies: dict[tuple[str, int], pb.SampleResponse] = {}
        self.lock = threading.Lock()

    def _reply(self, model: str, n: int, context) -> pb.SampleResponse:
        key = (model, max(n, 1))
        reply = self.replies.get(key)
        if reply is None:
            if model not in self.shapes:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no model {model!r}")
            reply = prebuilt_reply(model, key[1], self.shapes[model])
            with self.lock:
                self.replies[key] = reply
        return reply

    def Sample(self, request, context):
        return self._reply(request.model, request.n, context)

    def SampleConditional(self, request, context):
        return self._reply(request.model, request.n, context)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="127.0.0.1:50099")
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--threads", type=int, default=128, help="handler threads (ganserve's default max_concurrent_rpcs)")
    args, _ = p.parse_known_args(argv)
    server = grpc.server(futures.ThreadPoolExecutor(args.threads, thread_name_prefix="echo"))
    pb_grpc.add_GeneratorServiceServicer_to_server(Echo(output_shapes(args.store)), server)
    status = health.HealthServicer()
    status.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    if server.add_insecure_port(args.address) == 0:
        raise SystemExit(f"cannot listen on {args.address}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
