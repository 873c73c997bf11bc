"""Process wiring: `create_server(config) -> (server, port, app)` (tests start real servers on port 0 with it)
and `serve_one` for one server process until SIGTERM/SIGINT (server/supervisor.py runs several).

Order at start-up: bind, start, report NOT_SERVING on the health service, load the store, then SERVING. So a
Kubernetes readiness probe (or `grpc_health_probe`) passes only once models are loaded; GeneratorService
calls made before that answer UNAVAILABLE. Token, request limits and admission: server/interceptors.py.

SIGTERM/SIGINT: health goes NOT_SERVING (a new connection's Check sees it) and calls are still served for
`shutdown_notice_s`; then the port closes (a new connection is refused: UNAVAILABLE), in-flight calls get up to
`drain_s` to finish, and the process exits 0. Memory budget: server/budget.py; streams: server/streams.py.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from server.batcher import Batcher
from server.budget import MemoryBudget, MiB
from server.config import Config
from server.engine import make_runner
from server.gateway_backend import BatchSocket, GatewayBackend
from server.health import Health
from server.interceptors import OPEN_THREADS, SERVICE, Admission, CountingPool, TokenAuth
from server.limits import RequestChecks, RequestLimits, connection_options, raise_open_files, return_large_buffers
from server.oip_grpc import SERVICE as V2_SERVICE
from server.oip_grpc import InferenceService
from server.oip_http import HttpServer, RestApi
from server.registry import Registry
from server.service import GeneratorService
from server.streams import StreamGuard
from server.telemetry import Telemetry

log = logging.getLogger("ganserve.server")


def make_batcher(c: Config, telemetry: Telemetry, model, *, alone) -> Batcher:
    """The dynamic batcher of a loaded generator, with the configured knobs; `alone()`: whether the calling
    request is the only one in flight (the batcher's idle path)."""
    return Batcher(model.ref, make_runner(model), max_batch=min(c.max_batch_samples, model.max_batch_size),
                   max_queue=c.max_queue_size, max_delay_s=c.max_queue_delay_ms / 1000,
                   queue_timeout_s=c.queue_timeout_ms / 1000, observe=telemetry.observe_batch,
                   halve_s=c.batch_halve_ms / 1000,
                   runners=c.model_runners, inline_when_idle=c.inline_when_idle,
                   run_idle=make_runner(model, model.idle_session) if model.idle_session else None, alone=alone)


class App:
    """A created server and what it owns; `start()` loads the store and reports SERVING."""

    def __init__(self, config: Config, *, reuse_port: bool = False, batch_socket: str = "",
                 public: Config | None = None):
        """`batch_socket`: behind the native front end (server/frontend.py), also serve its batches on this Unix
        socket path (server/gateway_backend.py); `public` is then the user's configuration, whose TLS settings
        the v2 HTTP port (served by this process) takes."""
        self.config = config
        return_large_buffers()  # a large request's buffers go back to the system after it
        self.telemetry = Telemetry()
        self.registry = Registry(config, make_batcher=self._batcher, on_change=self.telemetry.set_models)
        self.pool = CountingPool(config.max_concurrent_rpcs)  # GeneratorService and v2 inference calls only
        self.serving = False  # models loaded and not draining (the v2 protocol's ServerReady)
        self.telemetry.track_in_flight(lambda: self.pool.in_flight)
        interceptors = [TokenAuth(config.token())] if config.token() else []
        interceptors.append(Admission(self.pool, config.max_concurrent_rpcs, self.telemetry.refused))
        self.budget = MemoryBudget(config.memory_budget_mb * MiB, f"/{SERVICE}/")
        self.streams = StreamGuard(max(1, int(config.stream_share * config.max_concurrent_rpcs)),
                                   config.stream_send_timeout_s, f"/{SERVICE}/", on_refuse=self.telemetry.refused,
                                   on_end=self.telemetry.stream_ended)
        self.telemetry.track_limits(self.budget, self.streams)
        interceptors += [self.streams, self.budget]  # the budget charges what RequestLimits lets through
        checks = RequestChecks(config)
        interceptors.append(RequestLimits(checks, self.telemetry.refused))  # innermost: wraps the real handlers
        self.max_connections = raise_open_files(config.max_connections)
        options = [("grpc.max_receive_message_length", checks.receive_limit()),
                   ("grpc.max_send_message_length", config.max_message_bytes),
                   ("grpc.so_reuseport", int(reuse_port)),  # only workers of one supervisor share a port
                   *connection_options(config, self.max_connections)]
        self.server = grpc.server(futures.ThreadPoolExecutor(OPEN_THREADS, thread_name_prefix="open"),
                                  interceptors=interceptors, options=options)
        self.health = Health()  # answers for the names _set_health sets, keeps nothing for others
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        service = GeneratorService(self.registry, config, self.telemetry, self.budget)
        pb_grpc.add_GeneratorServiceServicer_to_server(service, self.server)
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(self.registry, config, self.telemetry, ready=self.ready), self.server)
        self.batches = BatchSocket(batch_socket, GatewayBackend(service)) if batch_socket else None
        reflection.enable_server_reflection((SERVICE, V2_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.server)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self._bind()
        self.metrics_port: int | None = None
        self.http = None  # the Open Inference Protocol's REST port (server/oip_http.py), when http_port >= 0
        if config.http_port >= 0:
            api = RestApi(self.registry, config, self.telemetry, self.pool, self.ready)
            self.http = HttpServer(api, public or config, reuse_port=reuse_port)

    def _batcher(self, model) -> Batcher:
        return make_batcher(self.config, self.telemetry, model,
                            alone=lambda: self.pool.in_flight + (self.batches.in_flight if self.batches else 0) <= 1)

    def _bind(self) -> int:
        c = self.config
        if c.tls_cert:
            client_ca = Path(c.tls_client_ca).read_bytes() if c.tls_client_ca else None
            creds = grpc.ssl_server_credentials([(Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes())],
                                                root_certificates=client_ca, require_client_auth=client_ca is not None)
            port = self.server.add_secure_port(c.address, creds)
        else:
            port = self.server.add_insecure_port(c.address)
        if port == 0:
            raise OSError(f"could not bind {c.address}")
        return port

    def ready(self) -> bool:
        """Ready for inference: the store is loaded and the server is not draining."""
        return self.serving and self.registry.ready

    def _set_health(self, status) -> None:
        for name in ("", SERVICE, V2_SERVICE):
            self.health.set(name, status)

    def start(self) -> "App":
        """Start answering (health: NOT_SERVING), then load the store (health: SERVING)."""
        self.server.start()
        return self.load()

    def load(self) -> "App":
        """Metrics endpoint, v2 HTTP port, first store scan, hot-reload polling, then SERVING."""
        c = self.config
        if self.http is not None:
            self.http.start()
            log.info("Open Inference Protocol (v2) REST on %s://%s:%d/v2", self.http.scheme, c.http_address,
                     self.http.port)
        if c.metrics_port >= 0:
            try:
                self.metrics_port = self.telemetry.serve(c.metrics_address, c.metrics_port)
                log.info("Prometheus metrics on http://%s:%d/metrics", c.metrics_address, self.metrics_port)
            except OSError as e:  # metrics are not worth refusing to serve over
                log.error("cannot serve metrics on %s:%d: %s", c.metrics_address, c.metrics_port, e)
        self.registry.scan()
        self.registry.start_polling()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self.serving = True
        served = [f"{e.ref}{'' if e.state == 'READY' else ' ' + e.state}" for e in self.registry.entries()
                  if e.version == self.registry.default_version(e.name) or e.state != "READY"]
        where = c.address if c.address.startswith("unix:") else f"port {self.port}"
        log.info("serving %d model(s) on %s%s: %s", len(served), where,
                 " with TLS" if c.tls_cert else "", ", ".join(served) or "(store is empty)")
        return self

    def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish for up to `grace` seconds, release everything."""
        self.serving = False
        self.health.enter_graceful_shutdown()
        stopped = self.server.stop(self.config.drain_s if grace is None else grace)
        if self.http is not None:
            self.http.stop(self.config.drain_s if grace is None else grace)
        stopped.wait()
        if self.batches is not None:
            self.batches.close()
        self.health.close()
        self.streams.close()
        self.registry.close()
        self.telemetry.close()
        self.pool.shutdown(wait=False)


def create_server(config: Config | None = None, **overrides) -> tuple[grpc.Server, int, App]:
    """A bound, not yet started server: (grpc server, port, app). Call `app.start()` to load and serve."""
    config = Config(**{**(vars(config) if config else {}), **overrides})
    app = App(config)
    return app.server, app.port, app


def serve_one(config: Config, *, reuse_port: bool = False) -> int:
    """One server process until SIGTERM/SIGINT."""
    app = App(config, reuse_port=reuse_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    app.start()
    log.info("listening on %s (port %d)", config.address, app.port)
    stop.wait()
    app.serving = False
    app.health.enter_graceful_shutdown()  # new connections still get NOT_SERVING until the port closes
    log.info("shutting down: health NOT_SERVING for %.1f s, then draining in-flight requests for up to %.0f s",
             config.shutdown_notice_s, config.drain_s)
    time.sleep(config.shutdown_notice_s)
    app.stop()
    log.info("stopped")
    return 0
