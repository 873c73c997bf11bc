"""Process wiring: create_server(address) -> (server, port), and serve() with signal handling."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.ganserve.v1 import generator_pb2 as pb

log = logging.getLogger("ganserve.server")
SERVICE = pb.DESCRIPTOR.services_by_name["GeneratorService"].full_name


def create_server(address: str = "localhost:0", *, workers: int = 16) -> tuple[grpc.Server, int, health.HealthServicer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return server, port, health_servicer


def serve(address: str, grace: float = 10.0) -> int:
    server, port, health_servicer = create_server(address)
    server.start()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("listening on %s (port %d)", address, port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down: draining in-flight requests for up to %.0f s", grace)
    health_servicer.enter_graceful_shutdown()
    server.stop(grace).wait()
    return 0
