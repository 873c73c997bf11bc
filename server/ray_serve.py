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
through the proxy answers SERVING once models are loaded, for Kubernetes probes.
"""

from __future__ import annotations

import threading

from google.protobuf import message_factory
from grpc_health.v1 import health_pb2
from ray import serve

from protos.ganserve.v1 import generator_pb2 as pb
from protos.inference import grpc_predict_v2_pb2 as v2
from server.app import make_batcher
from server.config import Config, from_args
from server.oip_grpc import InferenceService
from server.registry import Registry
from server.service import GeneratorService
from server.telemetry import Telemetry

SERVICER_FUNCTIONS = ["protos.ganserve.v1.generator_pb2_grpc.add_GeneratorServiceServicer_to_server",
                      "protos.inference.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server",
                      "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server"]
REPLICA_KEY = "ganserve-replica"


class Aborted(Exception):
    """A handler chose a status, now set on Serve's gRPC context. The replica method then ends normally: the
    proxy applies the context's code, details and trailing metadata (the google.rpc.BadRequest the SDK reads
    `field` from), which it drops when the method raises."""


class _Context:
    """The parts of grpc.ServicerContext our handlers use, over Serve's RayServegRPCContext."""

    def __init__(self, grpc_context, replica: str):
        self._c, self._replica = grpc_context, replica
        if grpc_context is not None:
            grpc_context.set_trailing_metadata([(REPLICA_KEY, replica)])

    def time_remaining(self) -> None:  # Serve does not hand the client's deadline to the replica
        return None

    def is_active(self) -> bool:
        return True

    def abort_with_status(self, status) -> None:
        if self._c is not None:
            self._c.set_code(status.code)
            self._c.set_details(status.details)
            self._c.set_trailing_metadata([*status.trailing_metadata, (REPLICA_KEY, self._replica)])
        raise Aborted(f"{status.code.name}: {status.details}")


def settings(args: dict) -> Config:
    """Config from k=v settings (strings from `serve run ... k=v`, or typed values from a config file), then
    GANSERVE_* variables, then the defaults; metrics off unless asked (Serve exports its own)."""
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in {"metrics_port": -1, **args}.items()]
    try:
        return from_args(argv)
    except SystemExit as e:  # argparse reports the bad setting on stderr (the replica's log)
        raise ValueError(f"bad ganserve settings {args!r} (the replica log says which)") from e


class GanserveReplica:
    """One replica: the registry (hot reload), batchers and GeneratorService of one `python -m server`."""

    def __init__(self, **args):
        self.config = settings(args)
        self.telemetry = Telemetry()
        self._lock, self._in_flight = threading.Lock(), 0
        self.registry = Registry(self.config, on_change=self.telemetry.set_models,
                                 make_batcher=lambda m: make_batcher(self.config, self.telemetry, m,
                                                                     alone=lambda: self._in_flight <= 1))
        self.service = GeneratorService(self.registry, self.config, self.telemetry)
        self.v2 = InferenceService(self.registry, self.config, self.telemetry, ready=self.ready)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.registry.scan()
        self.registry.start_polling()

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

    def __del__(self):
        self.registry.close()


def _unary(servicer: str, name: str, reply_type):
    def method(self, request, grpc_context=None):
        self._enter(1)
        try:
            return getattr(getattr(self, servicer), name)(request, _Context(grpc_context, self.replica))
        except Aborted:  # the status is on the context; the empty reply is never delivered
            return reply_type()
        finally:
            self._enter(-1)

    method.__name__ = name
    return method


def _streaming(servicer: str, name: str):
    def method(self, request, grpc_context=None):
        self._enter(1)
        try:
            yield from getattr(getattr(self, servicer), name)(request, _Context(grpc_context, self.replica))
        except Aborted:
            return
        finally:
            self._enter(-1)

    method.__name__ = name
    return method


# One replica method per RPC of each protocol, named as in its proto (the proxy routes by method name alone:
# v1's, v2's and the health service's names do not collide).
for _servicer, _service in (("service", pb.DESCRIPTOR.services_by_name["GeneratorService"]),
                            ("v2", v2.DESCRIPTOR.services_by_name["GRPCInferenceService"])):
    for _m in _service.methods:
        assert not hasattr(GanserveReplica, _m.name), _m.name
        setattr(GanserveReplica, _m.name, _streaming(_servicer, _m.name) if _m.server_streaming
                else _unary(_servicer, _m.name, message_factory.GetMessageClass(_m.output_type)))

Ganserve = serve.deployment(GanserveReplica, name="ganserve", max_ongoing_requests=32,
                            ray_actor_options={"num_cpus": 0.5},
                            health_check_period_s=5, graceful_shutdown_timeout_s=10,
                            logging_config={"enable_access_log": False})  # as the server: no line per call


def build(args: dict) -> serve.Application:
    """The application for `serve run server.ray_serve:build k=v ...` and deploy/ray/serve.yaml: every
    argument is a server setting (`python -m server --help`)."""
    return Ganserve.bind(**args)
