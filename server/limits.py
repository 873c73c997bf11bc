"""Limits on what one request or one client can make a server process hold.

`RequestLimits` (an interceptor) and `RequestChecks` (also used for the native front end's batches): every
request's size against `max_request_bytes` (`max_upload_bytes` for EvaluateDivergence, whose uploads are
large) and its repeated fields' element counts against the server's limits, on the serialized bytes, before
anything is decoded (server/wire.py says why decoding first would be too late).

`return_large_buffers()`: glibc serves an allocation of at least M_MMAP_THRESHOLD bytes with its own mmap and
unmaps it when freed, but by default it raises that threshold to the size of any such block once it is freed
(up to 32 MiB), so after one large request every later one of that size comes from the heap's arenas and
stays in RSS after the call (measured: 100 Health calls with 6 MiB names left +10 MB for good; with the
threshold fixed at 1 MiB, RSS came back to its baseline). Large messages are rare and cost far more than an
mmap, so the threshold is fixed. Fixing it also freezes glibc's trim threshold at its 128 KiB default (it would
otherwise follow the mmap threshold up), so every reply of a few hundred KiB gave the heap's top back to the
system and faulted it in again on the next call: n=256 int8 Samples took 38.9 ms against 35.2 ms without the
mallopt (interleaved A/B, one client). The trim threshold is set too, to TRIM_THRESHOLD_BYTES: a request's
working set of sub-MiB buffers stays in the heap, and the budget's malloc_trim still returns it after large
requests (server/budget.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource

import grpc

from server.errors import InvalidArgument, ResourceExhausted, ServiceError, to_status
from server.wire import count_problem

log = logging.getLogger("ganserve.server")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20
TRIM_THRESHOLD_BYTES = 8 << 20


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold at 1 MiB and its trim threshold at 8 MiB (see the module docstring); False
    where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                    and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): their allocators behave differently
        log.debug("mallopt unavailable: large buffers stay with the allocator's defaults")
        return False


# -- per-message limits ------------------------------------------------------------------------------------------------

SERVICE = "ganserve.v1.GeneratorService"
UPLOAD_METHODS = frozenset({f"/{SERVICE}/EvaluateDivergence"})  # may carry uploaded samples: max_upload_bytes
SCAN_FROM = 64 << 10  # smaller messages decode to at most ~2 MB whatever they hold: not walked
MAX_TENSOR_DIMS = 32
MAX_METRICS = 64  # more names than any server knows (each metric at most once; divergence.py checks the names)


def repeated_limits(config) -> dict[str, int]:
    """Most elements of each repeated request field (by full name), from the server's limits (server/wire.py)."""
    p = "ganserve.v1."
    return {p + "SampleConditionalRequest.labels": config.max_samples,  # one for all, or one per sample
            p + "SampleStreamRequest.labels": config.max_stream_samples,
            p + "InterpolateRequest.endpoints": config.max_endpoints,
            p + "InvertRequest.labels": config.max_images,
            p + "ModelSource.labels": config.max_eval_n,
            p + "EvaluateDivergenceRequest.metrics": MAX_METRICS,
            p + "Tensor.shape": MAX_TENSOR_DIMS}


def refusal(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler that answers `code` without reading the request: declared client-streaming, so gRPC calls it
    before any message arrives, and it never asks for one (on the wire any call can be answered so)."""

    def refuse(requests, context):
        context.abort(code, message)

    return grpc.stream_unary_rpc_method_handler(refuse)


class RequestChecks:
    """A request's size and repeated-field counts, checked on its serialized bytes before it is decoded."""

    def __init__(self, config):
        self.request_bytes, self.upload_bytes = config.max_request_bytes, config.max_upload_bytes
        self.limits = repeated_limits(config)

    def receive_limit(self) -> int:
        """What gRPC itself may read of one message: the larger of the two limits."""
        return max(self.request_bytes, self.upload_bytes)

    def problem(self, data: bytes, descriptor, method: str) -> ServiceError | None:
        """Why `data` (a serialized request of `method`) is refused, or None."""
        upload = method in UPLOAD_METHODS
        limit, name = (self.upload_bytes, "max_upload_bytes") if upload else (self.request_bytes, "max_request_bytes")
        if len(data) > limit:
            which = "an EvaluateDivergence request" if upload else "a request"
            return ResourceExhausted(f"{which} of {len(data)} bytes is over the server's limit of {limit} bytes "
                                     f"({name})")
        if len(data) >= SCAN_FROM and descriptor is not None:
            found = count_problem(data, descriptor, self.limits)
            if found:
                return InvalidArgument(found[1], found[0])
        return None


class RequestLimits(grpc.ServerInterceptor):
    """Applies `RequestChecks` to every call with one request message (unary and server-streaming): the check
    runs in place of the request's deserializer, and a refused call is answered with its status (the field
    named) before any decoding. Calls that stream requests (reflection) keep gRPC's own receive limit."""

    def __init__(self, checks: RequestChecks, on_refuse=None):
        self._checks, self._on_refuse = checks, on_refuse or (lambda method, code: None)
        self._wrapped: dict = {}  # method -> (its handler, that handler checked): built once per method

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is None or cached[0] is not handler:  # (a race builds it twice, harmlessly)
            cached = self._wrapped[details.method] = (handler, self._checked(handler, details.method))
        return cached[1]

    def _checked(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        decode = handler.request_deserializer
        descriptor = getattr(getattr(decode, "__self__", None), "DESCRIPTOR", None)  # Message.FromString's class
        checks, on_refuse = self._checks, self._on_refuse
        short = method.rsplit("/", 1)[-1]

        def deserializer(data: bytes):
            refused = checks.problem(data, descriptor, method)
            if refused is not None:
                return refused
            return decode(data) if decode is not None else data

        kind = "unary_stream" if handler.response_streaming else "unary_unary"
        inner = getattr(handler, kind)

        def behaviour(request, context, *callback):
            if isinstance(request, ServiceError):
                on_refuse(short, request.code.name)
                context.abort_with_status(to_status(request))
            return inner(request, context, *callback)

        for attr in ("experimental_non_blocking", "experimental_thread_pool"):  # (the health service's Watch)
            if hasattr(inner, attr):
                setattr(behaviour, attr, getattr(inner, attr))
        return handler._replace(request_deserializer=deserializer, **{kind: behaviour})


# -- connections -------------------------------------------------------------------------------------------------------

FD_RESERVE = 256  # descriptors kept for everything but client connections: store files, sessions, sockets, logs
KEEPALIVE_TIMEOUT_S = 20
MIN_CLIENT_PING_S = 300  # clients pinging more often without calls get strikes (gRPC's default, stated here)
MAX_PING_STRIKES = 2


def raise_open_files(connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (the common soft default, 1,024, is what idle
    connections exhausted); returns how many connections fit: `connections`, or fewer when even the hard
    limit is too low (logged)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, connections + FD_RESERVE)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as e:  # (a container may forbid it)
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, want, e)
    fit = max(1, soft - FD_RESERVE)
    if connections > fit:
        log.warning("max_connections %d lowered to %d: the open-file limit is %d (raise the hard limit, e.g. "
                    "ulimit -Hn, LimitNOFILE= in systemd)", connections, fit, soft)
        return fit
    return connections


def connection_options(config, connections: int) -> list[tuple[str, int]]:
    """gRPC core's server options for the connection limits of `config` (docs/security.md)."""
    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    options = [("grpc.max_allowed_incoming_connections", connections),
               ("grpc.max_connection_idle_ms", ms(config.connection_idle_s)),
               ("grpc.server_handshake_timeout_ms", ms(config.handshake_timeout_s)),
               ("grpc.keepalive_time_ms", ms(config.keepalive_s)),
               ("grpc.keepalive_timeout_ms", ms(KEEPALIVE_TIMEOUT_S)),
               ("grpc.http2.min_ping_interval_without_data_ms", ms(MIN_CLIENT_PING_S)),
               ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES)]
    if config.connection_max_age_s > 0:
        options += [("grpc.max_connection_age_ms", ms(config.connection_max_age_s)),
                    ("grpc.max_connection_age_grace_ms", ms(config.connection_age_grace_s))]
    return options
