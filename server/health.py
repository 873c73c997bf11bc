"""The standard `grpc.health.v1.Health` service, answering only for the names this server sets.

The stock servicer (grpc_health.v1.health.HealthServicer) keeps an entry for every name a client ever asks
to Watch and never drops it: a client without a token could grow the server's memory for good with huge
names. This one answers from a table that only the server writes (`set`): the server ("")
and its own services. A name not in it is answered at once and nothing about it is kept: Check and Watch
both end with NOT_FOUND. (The standard keeps a Watch on an unknown name open in case the name becomes known;
here names are fixed at start-up, so there is nothing to wait for, and an open call would be held for
nothing.)

Watch calls on known names hold no thread (gRPC's non-blocking streaming handler): each is a callback in a
set that the call's end removes. Status messages go out on one thread of this servicer, in order, so a
watcher that stops reading never blocks the server's own status changes (start-up, the drain) or Check.
"""

from __future__ import annotations

import queue
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_SHOWN = 64  # characters of an unknown name quoted back in the status message


def _unknown(name: str, known) -> str:
    shown = name if len(name) <= _SHOWN else f"{name[:_SHOWN]}... ({len(name)} characters)"
    return f"unknown service {shown!r}; this server reports " + ", ".join(repr(k) for k in sorted(known))


class Health(health_pb2_grpc.HealthServicer):
    """Statuses of the names passed to `set` (the server calls it; clients only read)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._status: dict[str, int] = {}
        self._watchers: dict[str, set] = {}  # known name -> send callbacks of its open Watch calls
        self._final = False
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()  # (callbacks, status), in the order of the changes
        threading.Thread(target=self._deliver, name="health-watch", daemon=True).start()

    def _deliver(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:  # close()
                return
            sends, status = item
            for send in sends:
                send(health_pb2.HealthCheckResponse(status=status))  # (a call that ended meanwhile: a no-op)

    def set(self, service: str, status) -> None:
        """Set (or add) `service`'s status and tell its watchers. Ignored after `enter_graceful_shutdown`."""
        with self._lock:
            if self._final:
                return
            self._status[service] = status
            watchers = self._watchers.setdefault(service, set())
            if watchers:
                self._outbox.put((list(watchers), status))

    def enter_graceful_shutdown(self) -> None:
        """Every name NOT_SERVING for good (the drain): later `set` calls are ignored."""
        with self._lock:
            names = list(self._status)
        for name in names:
            self.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        with self._lock:
            self._final = True

    def close(self) -> None:
        """Stop the delivering thread (after the server stopped)."""
        self._outbox.put(None)

    def Check(self, request, context):
        with self._lock:
            status = self._status.get(request.service)
            known = list(self._status)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, _unknown(request.service, known))
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request, context, send_response_callback=None):
        """Non-blocking streaming handler: gRPC passes `send_response_callback` (None ends the call)."""
        send = send_response_callback
        with self._lock:
            status = self._status.get(request.service)
            if status is not None:
                watchers = self._watchers[request.service]
                watchers.add(send)
                self._outbox.put(([send], status))  # the current status first, then any change after it
            known = list(self._status)
        if status is None:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details(_unknown(request.service, known))
            send(None)
            return

        def gone():
            with self._lock:
                watchers.discard(send)

        if not context.add_callback(gone):  # the call already ended
            gone()

    Watch.experimental_non_blocking = True  # gRPC calls it with a send callback; no thread per Watch
