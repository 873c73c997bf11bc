"""Server-streaming calls (SampleStream) that are never read cannot take the server.

A stream holds an admission slot (a thread) for its whole life, and while the client does not read, gRPC's
send blocks that thread on HTTP/2 flow control. 200 unread streams once held all 128 slots for 30 s: every
other call was refused while health said SERVING. So:

- streams may hold at most `stream_share` x max_concurrent_rpcs slots at once; a stream beyond that is answered
  RESOURCE_EXHAUSTED at once (the slot is reserved when the call arrives, before it gets a thread, so a burst
  cannot overshoot), and the other slots stay for unary calls;
- a stream whose send has been blocked for `stream_send_timeout_s` (the client stopped reading) is cancelled:
  the client sees CANCELLED, the thread and the reply's memory are freed (ganserve_streams_ended_total);
- a stream ends after `max_stream_s` with DEADLINE_EXCEEDED (the service sets it as the call's deadline, so a
  batch job continues from the next offset with a new stream).

Readiness does not follow saturation: health stays SERVING while the slots are full. A full server refuses
in about a millisecond with RESOURCE_EXHAUSTED, which clients and load balancers retry elsewhere; taking
every saturated replica out of rotation at once would turn a burst into an outage (and would flap).
"""

from __future__ import annotations

import threading
import time
import weakref

import grpc


class _Slot:
    """One stream's reservation: taken when the call arrives, given back once when it ends (or when the call
    never ran and its handler is dropped)."""

    def __init__(self, guard: StreamGuard):
        self._box = [1]
        weakref.finalize(self, guard._release, self._box)
        self.sending_since: float | None = None
        self.context = None


class StreamGuard(grpc.ServerInterceptor):
    """Limits, watches and ends GeneratorService's server-streaming calls (see the module docstring)."""

    def __init__(self, max_streams: int, send_timeout_s: float, service_prefix: str, *, on_refuse, on_end):
        self.max_streams, self.send_timeout_s = max_streams, send_timeout_s
        self._prefix, self._on_refuse, self._on_end = service_prefix, on_refuse, on_end
        self._lock = threading.RLock()  # (a finalizer may give a slot back on a thread that holds it)
        self.active = 0
        self._open: set[_Slot] = set()
        self._closed = threading.Event()

        def refuse(request, context):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"server busy: {max_streams} streams in progress (stream_share x max_concurrent_rpcs); "
                          "retry with backoff")

        self._refuse = grpc.unary_unary_rpc_method_handler(refuse)
        threading.Thread(target=self._watch, name="stream-watchdog", daemon=True).start()

    def _take(self) -> _Slot | None:
        with self._lock:
            if self.active >= self.max_streams:
                return None
            self.active += 1
        return _Slot(self)

    def _release(self, box: list) -> None:
        with self._lock:
            self.active -= box[0]
            box[0] = 0

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not handler.response_streaming or not details.method.startswith(self._prefix):
            return handler
        slot = self._take()
        if slot is None:
            self._on_refuse(details.method.rsplit("/", 1)[-1])
            return self._refuse
        inner = handler.unary_stream

        def behaviour(request, context):  # a handler per call: it carries this call's slot
            tracked = self._track(inner(request, context), context, slot)

            def ended():  # the RPC is over (done, cancelled, past its deadline): free the slot now, and end the
                self._release(slot._box)  # generator if it waits at a yield (else it sees the end at its next check)
                with self._lock:
                    self._open.discard(slot)
                try:
                    tracked.close()
                except ValueError:  # running on its thread right now
                    pass

            if not context.add_callback(ended):
                ended()
            return tracked

        return handler._replace(unary_stream=behaviour)

    def _track(self, responses, context, slot: _Slot):
        slot.context = context
        with self._lock:
            self._open.add(slot)
        try:
            for response in responses:
                slot.sending_since = time.monotonic()
                yield response  # returns when gRPC has handed the message on (flow control permitting)
                slot.sending_since = None
        finally:
            with self._lock:
                self._open.discard(slot)
            self._release(slot._box)
            responses.close()

    def _watch(self) -> None:
        period = min(0.5, self.send_timeout_s / 4)
        while not self._closed.wait(period):
            now = time.monotonic()
            with self._lock:
                stuck = [s for s in self._open
                         if s.sending_since is not None and now - s.sending_since > self.send_timeout_s]
                for s in stuck:
                    self._open.discard(s)
            for s in stuck:
                s.context.cancel()  # the blocked send returns; the client sees CANCELLED
                self._on_end("send_blocked")

    def close(self) -> None:
        self._closed.set()
