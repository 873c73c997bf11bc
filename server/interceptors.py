"""The interceptors every call passes: the bearer token and admission (request limits: server/limits.py).

Access: with a token configured, every RPC needs the metadata `authorization: Bearer <token>`, compared in
constant time (hmac.compare_digest). The standard health service (and the v2 protocol's ServerLive/ServerReady)
stays open so probes work without secrets; reflection is behind the token like the service itself.

Admission: GeneratorService and v2 inference calls run on their own pool of `max_concurrent_rpcs` threads (gRPC's
per-behaviour `experimental_thread_pool`); the interceptor, which gRPC runs on its polling thread before a call
gets a thread, answers RESOURCE_EXHAUSTED at once when that pool already holds the limit. So overload is refused
in about a millisecond instead of queueing without bound, and health checks, reflection and the refusals run on
a separate small pool that busy service calls never occupy (bench/soak.py measures both).
"""

from __future__ import annotations

import hmac
import threading
from concurrent import futures

import grpc

from protos.ganserve.v1 import generator_pb2 as pb
from server.limits import refusal
from server.oip_grpc import SERVICE as V2_SERVICE

SERVICE = pb.DESCRIPTOR.services_by_name["GeneratorService"].full_name
# Probes need no secret and are never refused: the gRPC health service and the v2 protocol's liveness/readiness.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", f"/{V2_SERVICE}/ServerLive", f"/{V2_SERVICE}/ServerReady")
ADMITTED_PREFIXES = (f"/{SERVICE}/", f"/{V2_SERVICE}/")  # behind the admission limit (the rest of both services)
DENIED = "missing or wrong bearer token (metadata authorization)"
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


class Bearer:
    """The one check of a bearer token, in constant time (hmac.compare_digest): the gRPC interceptor below, the v2
    REST routes (server/oip_http.py) and the Ray Serve replicas (server/ray_serve.py) all ask it."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def admits(self, given: str | bytes | None) -> bool:
        """Whether an `authorization` value (header or metadata; None if absent) carries the token."""
        given = given.encode() if isinstance(given, str) else given or b""
        return hmac.compare_digest(given, self._expected)

    def admits_metadata(self, metadata) -> bool:
        """Whether gRPC invocation metadata ((key, value) pairs) carries the token (the last `authorization`)."""
        given = None
        for key, value in metadata or ():
            if key == "authorization":
                given = value
        return self.admits(given)


def is_open(method: str) -> bool:
    """Whether a call ("/package.Service/Method") is a probe, open without the token."""
    return method.startswith(OPEN_PREFIXES)


class TokenAuth(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every RPC except the probes (OPEN_PREFIXES)."""

    def __init__(self, token: str):
        self._bearer = Bearer(token)

        self._deny = refusal(grpc.StatusCode.UNAUTHENTICATED, DENIED)  # (the request is never read)

    def intercept_service(self, continuation, details):
        if is_open(details.method) or self._bearer.admits_metadata(details.invocation_metadata):
            return continuation(details)
        return self._deny
