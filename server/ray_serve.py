"""GeneratorService on Ray Serve: each replica runs the server's own handlers over its own registry.

    serve run deploy/ray/serve.yaml                          # the config file: replicas, autoscaling, ports
    serve run server.ray_serve:build store=model_store       # or the application builder, settings as k=v

Serve's gRPC proxy speaks our v1 protocol and the Open Inference Protocol's v2 (`grpc_servicer_functions`
names the generated `add_..._to_server`) and routes each call by method name to the replica method of that
name. The replica methods are the server's own handlers (server/service.py, server/oip_grpc.py), so a seed
gives the bytes `python -m server` gives, and errors keep their chosen status codes. Each replica has its own Registry, which polls the store
(`reload_interval_s`): a version published into the shared store is served by every replica within one
period. Every reply names its replica in the trailing metadata `ganserve-replica` (to see skew during a
rollout). Health: Serve's check calls `check_health` (the first store scan done); `grpc.health.v1.Health/Check`
through the proxy answers SERVING once models are loaded, for Kubernetes probes. Serve's HTTP proxy serves the
Open Inference Protocol's REST routes (server/oip_http.py's application, mounted with `serve.ingress`).

Access, as `python -m server`: with a token configured (GANSERVE_AUTH_TOKEN or auth_token_file, in the replica's
environment or settings), every gRPC call through the proxy but the probes needs `authorization: Bearer <token>`
(else UNAUTHENTICATED), and every REST route but /v2/health/* the header (else 401), checked by the server's own
code (server/interceptors.py's Bearer). A call through a DeploymentHandle inside the cluster carries no metadata
and is not checked. TLS is not the replica's: Serve's gRPC proxy has none (terminate it in front,
docs/scaling_out.md), so tls_* settings are refused here rather than ignored.

Deadline: Serve's proxies do not pass a client's deadline to the replica (2.60). A replica takes the proxy's
own `request_timeout_s` (gRPC: grpc_options; HTTP: http_options, or the request's `x-request-timeout-seconds`
header as the HTTP proxy reads it), counted from the call's arrival at the replica: past it the proxy has
answered DEADLINE_EXCEEDED (408 over HTTP) and the replica stops the work at its next check.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import NamedTuple

import grpc
import ray
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2
from ray import serve
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve._private.http_util import parse_request_timeout_header

from protos.ganserve.v1 import generator_pb2 as pb
from protos.inference import grpc_predict_v2_pb2 as v2
from server.app import make_batcher
from server.config import Config, from_args
from server.interceptors import DENIED, Bearer, CountingPool, is_open
from server.oip_grpc import InferenceService
from server.oip_http import RestApi
from server.registry import Registry
from server.service import GeneratorService
from server.telemetry import Telemetry

SERVICER_FUNCTIONS = ["protos.ganserve.v1.generator_pb2_grpc.add_GeneratorServiceServicer_to_server",
                      "protos.inference.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server",
                      "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server"]
REPLICA_KEY = "ganserve-replica"


class Aborted(Exception):
    """A handler chose a status, now set on Serve's gRPC context. A unary replica method then ends normally: the
    proxy applies the context's code, details and trailing metadata (the google.rpc.BadRequest the SDK reads
    `field` from), which it drops when the method raises. A streaming one raises it: the proxy then answers the
    context's code and details (not its trailing metadata)."""


class _Context:
    """The parts of grpc.ServicerContext our handlers use, over Serve's RayServegRPCContext."""

    def __init__(self, grpc_context, replica: str, timeout_s: float | None = None):
        self._c, self._replica = grpc_context, replica
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if grpc_context is not None:
            grpc_context.set_trailing_metadata([(REPLICA_KEY, replica)])

    def time_remaining(self) -> float | None:
        """Serve's gRPC request_timeout_s from the call's arrival here (the client's own deadline is not passed on)."""
        return None if self._deadline is None else self._deadline - time.monotonic()

    def metadata(self) -> list:
        return [] if self._c is None else self._c.invocation_metadata()

    def is_active(self) -> bool:
        return True

    def abort_with_status(self, status) -> None:
        self.abort(status.code, status.details, status.trailing_metadata)

    def abort(self, code: grpc.StatusCode, details: str, trailing_metadata=()) -> None:
        if self._c is not None:
            self._c.set_code(code)
            self._c.set_details(details)
            self._c.set_trailing_metadata([*trailing_metadata, (REPLICA_KEY, self._replica)])
        raise Aborted(f"{code.name}: {details}")


class Timeouts(NamedTuple):
    """request_timeout_s of Serve's proxies (None: none)."""
    grpc: float | None = None
    http: float | None = None


async def proxy_timeouts() -> Timeouts:
    """The proxies' request_timeout_s, asked of Serve's controller (the one place the running config is kept)."""
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    grpc_options, http_options = await asyncio.gather(controller.get_grpc_config.remote(),
                                                      controller.get_http_config.remote())
    # (the proxies treat a negative timeout as none)
    return Timeouts(*(None if t is None or t < 0 else float(t)
                      for t in (grpc_options.request_timeout_s, http_options.request_timeout_s)))


class ServeRestApi(RestApi):
    """The v2 REST routes behind Serve's HTTP proxy: the deadline is the proxy's (its header, else its config)."""

    def __init__(self, *args, timeout_s: float | None = None):
        super().__init__(*args)
        self.timeout_s = timeout_s

    def deadline(self, headers: dict) -> float | None:
        timeout = parse_request_timeout_header(headers, self.timeout_s)
        return None if timeout is None else time.monotonic() + timeout


def settings(args: dict) -> Config:
    """Config from k=v settings (strings from `serve run ... k=v`, or typed values from a config file), then
    GANSERVE_* variables, then the defaults; metrics off unless asked (Serve exports its own)."""
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in {"metrics_port": -1, **args}.items()]
    try:
        config = from_args(argv)
    except SystemExit as e:  # argparse reports the bad setting on stderr (the replica's log)
        raise ValueError(f"bad ganserve settings {args!r} (the replica log says which)") from e
    if config.tls_cert or config.tls_client_ca:
        raise ValueError("tls_cert/tls_client_ca: Serve's proxies, not the replica, hold the connections, and its "
                         "gRPC proxy has no TLS: terminate TLS in front of it (docs/scaling_out.md)")
    return config


class GanserveReplica:
    """One replica: the registry (hot reload), batchers and GeneratorService of one `python -m server`."""

    def __init__(self, **args):
        self.config = settings(args)
        token = self.config.token()
        self.bearer = Bearer(token) if token else None
        self.timeouts = Timeouts()  # the proxies' (__serve_build_asgi_app__ asks the controller)
        self.telemetry = Telemetry()
        self._lock, self._in_flight = threading.Lock(), 0
        self.pool = CountingPool(self.config.max_concurrent_rpcs)  # the REST calls' (gRPC calls run on Serve's)
        self.registry = Registry(self.config, on_change=self.telemetry.set_models,
                                 make_batcher=lambda m: make_batcher(self.config, self.telemetry, m,
                                                                     alone=lambda: self._in_flight <= 1))
        self.service = GeneratorService(self.registry, self.config, self.telemetry)
        self.v2 = InferenceService(self.registry, self.config, self.telemetry, ready=self.ready)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.registry.scan()
        self.registry.start_polling()

    async def __serve_build_asgi_app__(self) -> RestApi:
        """Serve calls this after __init__, before any request: the REST routes, and the proxies' timeouts."""
        self.timeouts = await proxy_timeouts()
        return ServeRestApi(self.registry, self.config, self.telemetry, self.pool, self.ready,
                            timeout_s=self.timeouts.http)

    def check_health(self) -> None:
        if not self.registry.ready:
            raise RuntimeError("the store has not been scanned yet")

    def ready(self) -> bool:
        return self.registry.ready and bool(self.registry.models())

    def Check(self, request, grpc_context=None):
        _Context(grpc_context, self.replica)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING if self.ready()
                                              else health_pb2.HealthCheckResponse.NOT_SERVING)

    def _enter(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta

    def _context(self, grpc_context, method: str) -> _Context:
        """The call's context, once its token is checked (Aborted with UNAUTHENTICATED if wrong or missing)."""
        context = _Context(grpc_context, self.replica, self.timeouts.grpc)
        if (self.bearer is not None and grpc_context is not None and not is_open(method)
                and not self.bearer.admits_metadata(context.metadata())):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
        return context

    def __del__(self):
        self.registry.close()


def _unary(servicer: str, path: str, reply_type):
    name = path.rsplit("/", 1)[1]

    def method(self, request, grpc_context=None):
        self._enter(1)
        try:
            return getattr(getattr(self, servicer), name)(request, self._context(grpc_context, path))
        except Aborted:  # the status is on the context; the empty reply is never delivered
            return reply_type()
        finally:
            self._enter(-1)

    method.__name__ = name
    return method


def _streaming(servicer: str, path: str):
    name = path.rsplit("/", 1)[1]

    def method(self, request, grpc_context=None):
        self._enter(1)
        try:
            yield from getattr(getattr(self, servicer), name)(request, self._context(grpc_context, path))
        finally:  # (Aborted propagates: the proxy applies a stream's context only with a message, so a stream
            # refused before its first one would end OK; raised, the context's code and details reach the client)
            self._enter(-1)

    method.__name__ = name
    return method


# One replica method per RPC of each protocol, named as in its proto (the proxy routes by method name alone:
# v1's, v2's and the health service's names do not collide).
for _servicer, _service in (("service", pb.DESCRIPTOR.services_by_name["GeneratorService"]),
                            ("v2", v2.DESCRIPTOR.services_by_name["GRPCInferenceService"])):
    for _m in _service.methods:
        assert not hasattr(GanserveReplica, _m.name), _m.name
        _path = f"/{_service.full_name}/{_m.name}"
        setattr(GanserveReplica, _m.name, _streaming(_servicer, _path) if _m.server_streaming
                else _unary(_servicer, _path, message_factory.GetMessageClass(_m.output_type)))

Ganserve = serve.deployment(serve.ingress()(GanserveReplica), name="ganserve", max_ongoing_requests=32,
                            ray_actor_options={"num_cpus": 0.5},
                            health_check_period_s=5, graceful_shutdown_timeout_s=10,
                            logging_config={"enable_access_log": False})  # as the server: no line per call


def build(args: dict) -> serve.Application:
    """The application for `serve run server.ray_serve:build k=v ...` and deploy/ray/serve.yaml: every
    argument is a server setting (`python -m server --help`)."""
    return Ganserve.bind(**args)
