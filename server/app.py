"""Process wiring: `create_server(config) -> (server, port, app)` (tests start real servers on port 0 with it),
and `serve_one` / `Supervisor` for `python -m server` (server/__main__.py) with signal handling.

Order at start-up: bind, start, report NOT_SERVING on the health service, load the store, then SERVING. So a
Kubernetes readiness probe (or `grpc_health_probe`) passes only once models are loaded; GeneratorService
calls made before that answer UNAVAILABLE.

Access: with a token configured, every RPC needs the metadata `authorization: Bearer <token>`, compared in
constant time (hmac.compare_digest) by an interceptor. The standard health service (and the v2 protocol's
ServerLive/ServerReady) stays open so probes work without secrets; reflection is behind the token like the
service itself. TLS (server certificate,
optionally client certificates) is on when tls_cert/tls_key are given.

Admission: GeneratorService calls run on their own pool of `max_concurrent_rpcs` threads (gRPC's per-behaviour
`experimental_thread_pool`); an interceptor, which gRPC runs on its polling thread before a call gets a
thread, answers RESOURCE_EXHAUSTED at once when that pool already holds the limit. So overload is refused in
about a millisecond instead of queueing without bound, and health checks, reflection and the refusals run on
a separate small pool that busy service calls never occupy (bench/soak.py measures both).

SIGTERM/SIGINT: health goes NOT_SERVING, new RPCs are refused, in-flight ones get up to `drain_s` to finish,
then the process exits 0.

Workers (`workers` > 1): one Python process serves at most ~1 core of per-request Python work (the GIL), so
single-sample traffic from many clients tops out before the cores do (bench: ~1,700 requests/s on 2 cores,
with CPU left idle). `python -m server` then runs a supervisor that starts `workers` server processes on the same
address with SO_REUSEPORT: the kernel spreads incoming connections over them (a connection stays with one
worker, so one client channel is served by one worker; several clients or channels spread). Each worker is
a whole server (its own store scan and hot reload, batchers, admission limit, health), and serves Prometheus
metrics on `metrics_port + i` (port 0: any free port each; the log says which). The supervisor refuses an
address that is already in use before starting any worker (SO_REUSEPORT would otherwise let a second
ganserve silently share the port), restarts a worker that dies, gives up if workers keep dying within seconds
of their start (a bad store, say), and on SIGTERM/SIGINT stops them all, each draining as above.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from server.batcher import Batcher
from server.config import Config
from server.engine import make_runner
from server.gateway_backend import BatchSocket, GatewayBackend
from server.health import Health
from server.limits import RequestChecks, RequestLimits, refusal, return_large_buffers
from server.oip_grpc import SERVICE as V2_SERVICE
from server.oip_grpc import InferenceService
from server.oip_http import HttpServer, RestApi
from server.registry import Registry
from server.service import GeneratorService
from server.telemetry import Telemetry, setup_logging

log = logging.getLogger("ganserve.server")
SERVICE = pb.DESCRIPTOR.services_by_name["GeneratorService"].full_name
# Probes need no secret and are never refused: the gRPC health service and the v2 protocol's liveness/readiness.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", f"/{V2_SERVICE}/ServerLive", f"/{V2_SERVICE}/ServerReady")
ADMITTED_PREFIXES = (f"/{SERVICE}/", f"/{V2_SERVICE}/")  # behind the admission limit (the rest of both services)
OPEN_THREADS = 8  # health checks, reflection and refusals: never held by service calls


class CountingPool(futures.ThreadPoolExecutor):
    """A thread pool that knows how many calls it holds (queued or running). gRPC submits one task per call,
    and every task runs to its end even when the client went away, so the count never leaks."""

    def __init__(self, max_workers: int):
        super().__init__(max_workers=max_workers, thread_name_prefix="rpc")
        self._count_lock = threading.Lock()
        self.in_flight = 0

    def _done(self) -> None:
        with self._count_lock:
            self.in_flight -= 1

    def submit(self, fn, /, *args, **kwargs):
        with self._count_lock:
            self.in_flight += 1

        def task():
            try:
                return fn(*args, **kwargs)
            finally:
                self._done()

        try:
            return super().submit(task)
        except BaseException:
            self._done()
            raise


def _on_pool(handler: grpc.RpcMethodHandler, pool: CountingPool) -> grpc.RpcMethodHandler:
    """The same handler, its behaviour run on `pool` (GeneratorService has unary and server-streaming calls)."""
    kind = "unary_stream" if handler.response_streaming else "unary_unary"
    inner = getattr(handler, kind)

    def behaviour(request, context):
        return inner(request, context)

    behaviour.experimental_thread_pool = pool
    return handler._replace(**{kind: behaviour})


class Admission(grpc.ServerInterceptor):
    """GeneratorService and v2 inference calls go to `pool`, or are refused RESOURCE_EXHAUSTED while it holds
    `limit` calls."""

    def __init__(self, pool: CountingPool, limit: int, on_refuse):
        self._pool, self._limit, self._on_refuse = pool, limit, on_refuse
        self._wrapped: dict = {}  # method -> (its handler, that handler on the pool): built once per method

        self._refuse = refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,  # (the request is never read)
                               f"server busy: {limit} calls in progress (max_concurrent_rpcs); retry with backoff")

    def intercept_service(self, continuation, details):
        if not details.method.startswith(ADMITTED_PREFIXES) or details.method.startswith(OPEN_PREFIXES):
            return continuation(details)
        if self._pool.in_flight >= self._limit:
            self._on_refuse(details.method.rsplit("/", 1)[-1])
            return self._refuse
        handler = continuation(details)
        if handler is None:
            return None
        cached = self._wrapped.get(details.method)
        if cached is None or cached[0] is not handler:  # (a race builds it twice, harmlessly)
            cached = self._wrapped[details.method] = (handler, _on_pool(handler, self._pool))
        return cached[1]


class TokenAuth(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every RPC except the probes (OPEN_PREFIXES)."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        self._deny = refusal(grpc.StatusCode.UNAUTHENTICATED,  # (the request is never read)
                             "missing or wrong bearer token (metadata authorization)")

    def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_PREFIXES):
            return continuation(details)
        given = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(given, self._expected):
            return continuation(details)
        return self._deny


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
        checks = RequestChecks(config)
        interceptors.append(RequestLimits(checks, self.telemetry.refused))  # innermost: wraps the real handlers
        options = [("grpc.max_receive_message_length", checks.receive_limit()),
                   ("grpc.max_send_message_length", config.max_message_bytes),
                   ("grpc.so_reuseport", int(reuse_port))]  # only workers of one supervisor share a port
        self.server = grpc.server(futures.ThreadPoolExecutor(OPEN_THREADS, thread_name_prefix="open"),
                                  interceptors=interceptors, options=options)
        self.health = Health()  # answers for the names _set_health sets, keeps nothing for others
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        service = GeneratorService(self.registry, config, self.telemetry)
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
    log.info("shutting down: draining in-flight requests for up to %.0f s", config.drain_s)
    app.stop()
    log.info("stopped")
    return 0


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


def claim_port(address: str) -> int:
    """The port the workers will share: `address`'s, or a free one for port 0. Fails (OSError, EADDRINUSE)
    when something already listens there: bound without SO_REUSEPORT, as a plain server would be."""
    host, port = _split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT leftovers are no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(e.errno, f"cannot serve on {address}: {e.strerror}") from e
        return s.getsockname()[1]


def _worker_main(fields: dict, index: int) -> None:
    """A worker process (spawned): one whole server on the shared port."""
    config = Config(**fields)
    setup_logging(config.log_level, config.log_format, worker=index)
    raise SystemExit(serve_one(config, reuse_port=True))


class QuickCrashes:
    """When to stop restarting a child process: after `limit` deaths in a row, each within `window_s` of its start
    (a bad store, a busy port: restarting would only repeat the failure)."""

    def __init__(self, window_s: float = 10.0, limit: int = 3):
        self.window_s, self.limit, self._count = window_s, limit, 0

    def give_up(self, lived_s: float) -> bool:
        """Record a death after `lived_s` seconds; True when it is time to stop."""
        self._count = self._count + 1 if lived_s < self.window_s else 0
        return self._count >= self.limit


class Supervisor:
    """Starts `config.workers` server processes on one address (SO_REUSEPORT), restarts one that dies, stops
    them all on SIGTERM/SIGINT."""

    def __init__(self, config: Config):
        self.config = config
        host, _ = _split_address(config.address)
        self.port = claim_port(config.address)
        self.address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        # the v2 REST port, shared the same way (port 0: one free port for all workers)
        self.http_port = claim_port(f"{config.http_address}:{config.http_port}") if config.http_port >= 0 else -1
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process that holds gRPC state
        self._procs: list = [None] * config.workers
        self._started = [0.0] * config.workers
        self._stop = threading.Event()

    def _worker_config(self, i: int) -> dict:
        c = self.config
        metrics = c.metrics_port + i if c.metrics_port > 0 else c.metrics_port
        return dataclasses.asdict(dataclasses.replace(c, address=self.address, metrics_port=metrics, workers=1,
                                                      http_port=self.http_port))

    def _start(self, i: int) -> None:
        proc = self._ctx.Process(target=_worker_main, args=(self._worker_config(i), i), name=f"ganserve-worker-{i}")
        proc.start()
        self._procs[i], self._started[i] = proc, time.monotonic()
        log.info("worker %d started (pid %d) on %s", i, proc.pid, self.address)

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        log.info("supervisor (pid %d): %d workers on %s", os.getpid(), self.config.workers, self.address)
        crashes, code = QuickCrashes(), 0
        try:  # whatever happens here (a worker that cannot be spawned, say), the started ones are stopped
            for i in range(self.config.workers):
                self._start(i)
            while not self._stop.wait(0.5):
                for i, proc in enumerate(self._procs):
                    if proc.is_alive() or self._stop.is_set():  # (a Ctrl-C reaches the workers too: no restart)
                        continue
                    lived = time.monotonic() - self._started[i]
                    log.error("worker %d (pid %d) exited with %s after %.1f s", i, proc.pid, proc.exitcode, lived)
                    if crashes.give_up(lived):
                        log.error("workers keep dying right after their start; stopping (see the errors above)")
                        self._stop.set()
                        code = 1
                        break
                    self._start(i)
        finally:
            self._shutdown()
        return code

    def _shutdown(self) -> None:
        log.info("stopping %d workers (each drains for up to %.0f s)", len(self._procs), self.config.drain_s)
        for proc in self._procs:
            if proc is not None and proc.is_alive():
                proc.terminate()  # SIGTERM: the worker drains, then exits 0
        deadline = time.monotonic() + self.config.drain_s + 15
        for proc in self._procs:
            if proc is None:
                continue
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.join(5)
        log.info("stopped")
