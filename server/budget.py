"""A memory budget for the bytes of requests and replies in flight (GeneratorService calls).

Why: the message limit bounds one request, the admission limit bounds how many calls run, but their product
(128 calls x 64 MiB) is far more than a server should hold; eight near-limit requests at once took a server
from 225 MB to 1.4 GB. So every call is charged for what it makes the process hold, and a call that would
take the total over `memory_budget_mb` is answered RESOURCE_EXHAUSTED at once, before that memory is spent:

- the request: REQUEST_FACTOR x its serialized size (the bytes gRPC hands over, the parsed message, the numpy
  arrays made from it), charged in the request deserializer, i.e. *before* the message is parsed (and after
  server/limits.py's size checks): a refused request is never decoded;
- the reply: the engine reserves 3x the bytes of the float32 samples it is about to compute (the array, the
  reply's tensor bytes, the serialized message) through `Call.reserve`, before running the model;
  a SampleStream reserves one chunk (it holds about one at a time); EvaluateDivergence reserves its estimators'
  working memory for uploaded points (server/divergence.py: POINTS_WORK_FACTOR x their bytes);
- the only call in flight is never refused (a request larger than the whole budget could never be served), so
  the bound is max(budget, one call's charge);
- all of it is released when the RPC ends (gRPC's termination callback: after the reply has been sent, or the
  client went away).

What the budget does not cover (the stated overhead): bytes gRPC's core holds before the deserializer runs
(up to one message per call being received; the message limit bounds each), and working memory of an
EvaluateDivergence's estimators (bounded by max_eval_n) and of the models themselves.

Undecodable request bytes (not a protobuf of the method's type) are answered INVALID_ARGUMENT naming the
message type, instead of gRPC's own INTERNAL "Exception deserializing request!".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
import weakref

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError

from server.errors import ResourceExhausted

REQUEST_FACTOR = 3
MiB = 1 << 20


class _Refused:
    """What the deserializer hands on for a request over the budget (it was never parsed)."""

    def __init__(self, message: str):
        self.message = message


class _Undecodable:
    def __init__(self, message: str):
        self.message = message


class _Admitted:
    """A parsed request and the charge it carries (released when the call ends)."""

    __slots__ = ("__weakref__", "charge", "request")

    def __init__(self, request, charge: Charge):
        self.request, self.charge = request, charge


class Charge:
    """Bytes one call holds against the budget. `reserve(n)`: the call is about to hold n more bytes (a reply,
    working memory), ResourceExhausted when the budget has no room; `release()` gives all of it back, once (also
    when the call is garbage without having run)."""

    def __init__(self, budget: MemoryBudget, nbytes: int):
        self._budget = budget
        # [bytes held, the request's own share]: shared with the finalizer, which must not hold the Charge itself
        self._box = [nbytes, nbytes]
        weakref.finalize(self, budget._give, self._box)

    def reserve(self, nbytes: int) -> None:
        nbytes = int(nbytes)
        if nbytes <= 0:
            return
        if not self._budget._take(nbytes):
            raise ResourceExhausted(self._budget.refusal(nbytes, "this call's reply or working memory"))
        with self._budget._lock:
            self._box[0] += nbytes

    def release(self) -> None:
        self._budget._give(self._box)


class _Trimmer:
    """glibc's malloc_trim(0), at most once per `period` s, on its own thread, after large requests left: gRPC
    receives a message in many small HTTP/2 frames whose buffers stay in the allocator's arenas after the call
    (16 concurrent 7.5 MiB requests left +200 MB in RSS for good; trimmed, +10 MB). A no-op without glibc."""

    def __init__(self, period: float = 1.0):
        try:
            self._trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
        except (OSError, AttributeError, TypeError):
            self._trim = None
        self._due, self._period = threading.Event(), period
        if self._trim is not None:
            threading.Thread(target=self._run, name="malloc-trim", daemon=True).start()

    def soon(self) -> None:
        self._due.set()

    def _run(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()  # (a release during the pause below asks for another trim after this one)
            time.sleep(self._period)  # let the calls that are ending end, then trim once for all of them
            self._trim(0)


TRIM_FROM = 1 << 20  # a request or charge at least this large schedules a trim


class MemoryBudget(grpc.ServerInterceptor):
    """The budget, and the interceptor that charges GeneratorService calls to it (see the module docstring)."""

    def __init__(self, limit_bytes: int, service_prefix: str):
        self.limit = int(limit_bytes)
        self._prefix = service_prefix
        self._lock = threading.RLock()  # (a finalizer, run by any allocation, may give a charge back here)
        self.in_use = 0
        self.on_refuse = lambda: None  # (telemetry counts refusals)
        self._wrapped: dict = {}  # method -> (its handler, the charging one)
        self._charges: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # servicer context -> Charge
        self._trimmer = _Trimmer()

    # -- accounting -----------------------------------------------------------------------------------------
    def _take(self, nbytes: int) -> bool:
        with self._lock:  # (the only call in flight is never refused: it could never be served otherwise)
            room = self.in_use + nbytes <= self.limit or self.in_use == 0
            if room:
                self.in_use += nbytes
        if not room:
            self.on_refuse()
        return room

    def _give(self, box: list) -> None:
        with self._lock:
            nbytes, box[0] = box[0], 0
            self.in_use -= nbytes
            received, box[1] = box[1], 0
        # Only a large received message leaves gRPC's frame buffers behind; a large reply is numpy's and goes back by
        # itself. Trimming after every large reply cost 12% of n=256 Sample throughput (measured: it also hands the
        # pages the next reply needs back to the kernel).
        if received >= TRIM_FROM:
            self._trimmer.soon()

    def refusal(self, nbytes: int, what: str) -> str:
        return (f"server memory budget: {what} needs {nbytes / MiB:.1f} MiB and {self.in_use / MiB:.0f} of "
                f"{self.limit / MiB:.0f} MiB are held by requests and replies in flight (memory_budget_mb); "
                "retry with backoff, or ask for less at once")

    def charge(self, context) -> Charge | None:
        """The charge of the call `context` belongs to (None for calls this budget does not see)."""
        return self._charges.get(context)

    # -- the interceptor ------------------------------------------------------------------------------------
    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith(self._prefix) or handler.request_streaming:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[details.method] = (handler, self._charging(handler, details.method))
        return cached[1]

    def _charging(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        parse = handler.request_deserializer  # (server/limits.py's size checks, then the message's own parser)
        try:
            name = descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", ".")).input_type.full_name
        except KeyError:
            name = "request message"

        def deserialize(raw: bytes):
            nbytes = REQUEST_FACTOR * len(raw)
            if not self._take(nbytes):
                if len(raw) >= TRIM_FROM:
                    self._trimmer.soon()
                return _Refused(self.refusal(nbytes, f"this request ({len(raw) / MiB:.1f} MiB)"))
            charge = Charge(self, nbytes)
            try:
                request = parse(raw) if parse else raw
            except DecodeError as e:
                charge.release()
                return _Undecodable(f"the request is not a valid {name}: {e}")
            if isinstance(request, Exception):  # refused by the size checks: nothing was decoded
                charge.release()
            return _Admitted(request, charge)

        kind = "unary_stream" if handler.response_streaming else "unary_unary"
        inner = getattr(handler, kind)

        def enter(arg, context):
            if isinstance(arg, _Refused):
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, arg.message)
            if isinstance(arg, _Undecodable):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, arg.message)
            charge = arg.charge
            self._charges[context] = charge
            if not context.add_callback(charge.release):  # the call already ended
                charge.release()
            return arg.request

        def behaviour(arg, context):
            return inner(enter(arg, context), context)

        return handler._replace(request_deserializer=deserialize, **{kind: behaviour})
