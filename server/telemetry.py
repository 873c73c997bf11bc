"""Prometheus metrics (on their own port) and structured logs.

One CollectorRegistry per server instance, so several servers in one process (tests) do not collide.

    ganserve_requests_total{method, model, code}     every RPC, by final status
    ganserve_request_seconds{method, model}          latency histogram, per model ("-" when none was resolved)
    ganserve_batch_samples{model}                    rows per ONNX Runtime generator call
    ganserve_queue_depth{model}                      requests waiting in the model's batcher
    ganserve_stream_chunks_total{model}              SampleStream chunks produced
    ganserve_model_loaded{model, version, kind}      1 per callable model version (READY or CANDIDATE)
    ganserve_model_version_state{model, version, state, reason}  1 per version of the store, in its state
    ganserve_model_resident{model, version}          1 when the version's sessions are in memory, else 0
    ganserve_model_default_version{model}            the version "name" resolves to
    ganserve_model_quality{model, version, figure}   judged figures of each callable version (quality gate)
    ganserve_calls_in_progress                       RPCs holding a handler thread (queued or running)
    ganserve_abandoned_calls_total{method, code}      calls that ended DEADLINE_EXCEEDED/CANCELLED, or ran past
                                                     their deadline
    ganserve_seconds_after_deadline_total{method}    handler time spent after calls' deadlines (wall seconds)
    ganserve_cpu_seconds_after_deadline_total{method}  the CPU of it (estimated: the wall time after the deadline
                                                     x the share of the call the handler thread was on a CPU)
    ganserve_memory_budget_bytes                     bytes of requests and replies charged to the memory budget
    ganserve_memory_budget_refusals_total            calls refused RESOURCE_EXHAUSTED by the memory budget
    ganserve_streams_active                          SampleStream calls holding a slot
    ganserve_streams_ended_total{reason}             streams the server ended (send_blocked: the client stopped
                                                     reading for stream_send_timeout_s)
    ganserve_bad_model_outputs_total{model}          replies refused because a model produced NaN/Inf or values
                                                     outside its declared range (answered INTERNAL, logged)
Calls refused before their handler (server busy; a request over a size or count limit) count in
ganserve_requests_total with model "-" and their code.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from ganserve.store.policy import TOLERANCES as GATED

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
METRICS_IDLE_S = 10.0  # the metrics endpoint closes a connection silent this long
METRICS_CONNECTIONS = 64  # and holds at most this many at once (scrapers are few)


class Telemetry:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ganserve_requests", "RPCs by method, model and status", ["method", "model", "code"],
                                registry=r)
        self.latency = Histogram("ganserve_request_seconds", "RPC latency by method and model", ["method", "model"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("ganserve_batch_samples", "rows per generator run", ["model"], buckets=_BATCH_BUCKETS,
                               registry=r)
        self.queue = Gauge("ganserve_queue_depth", "requests waiting in the batcher", ["model"], registry=r)
        self.chunks = Counter("ganserve_stream_chunks", "SampleStream chunks produced", ["model"], registry=r)
        self.loaded = Gauge("ganserve_model_loaded", "served model versions", ["model", "version", "kind"], registry=r)
        self.state = Gauge("ganserve_model_version_state", "1 for each version of the store in its state "
                           "(READY, UNAVAILABLE, CANDIDATE, RETIRED), with the reason", ["model", "version", "state",
                                                                                         "reason"], registry=r)
        self.resident = Gauge("ganserve_model_resident", "1 when the version's sessions are in memory",
                              ["model", "version"], registry=r)
        self.default = Gauge("ganserve_model_default_version", "the version 'name' resolves to", ["model"],
                             registry=r)
        self.quality = Gauge("ganserve_model_quality", "judged figures of each callable version (the quality "
                             "gate's inputs, from its manifest)", ["model", "version", "figure"], registry=r)
        self.in_progress = Gauge("ganserve_calls_in_progress", "RPCs holding a handler thread", registry=r)
        self.abandoned_calls = Counter("ganserve_abandoned_calls", "calls ended by their deadline or cancellation, "
                                       "or finished past their deadline", ["method", "code"], registry=r)
        self.after_deadline = Counter("ganserve_seconds_after_deadline", "handler time after calls' deadlines",
                                      ["method"], registry=r)
        self.cpu_after_deadline = Counter("ganserve_cpu_seconds_after_deadline", "handler CPU after calls' "
                                          "deadlines (estimated)", ["method"], registry=r)
        self.budget_bytes = Gauge("ganserve_memory_budget_bytes", "bytes charged to the memory budget", registry=r)
        self.budget_refusals = Counter("ganserve_memory_budget_refusals", "calls refused by the memory budget",
                                       registry=r)
        self.streams_active = Gauge("ganserve_streams_active", "SampleStream calls holding a slot", registry=r)
        self.streams_ended = Counter("ganserve_streams_ended", "streams ended by the server", ["reason"], registry=r)
        self.bad_outputs = Counter("ganserve_bad_model_outputs", "replies refused: a model produced NaN/Inf or "
                                   "values outside its declared range", ["model"], registry=r)
        self.http = None
        self.port: int | None = None
        self._batch_children: dict = {}
        self._call_children: dict = {}

    def observe_batch(self, model: str, rows: int, depth: int) -> None:
        children = self._batch_children.get(model)
        if children is None:  # labels() costs a lock and a dict lookup per call; once per model is enough
            children = self._batch_children[model] = (self.batch.labels(model), self.queue.labels(model))
        children[0].observe(rows)
        children[1].set(depth)

    def observe_call(self, method: str, model: str, code: str, seconds: float) -> None:
        """One finished RPC: counted by (method, model, code), timed by (method, model)."""
        key = (method, model, code)
        children = self._call_children.get(key)
        if children is None:  # (bounded: methods x served models x codes)
            children = self._call_children[key] = (self.requests.labels(method, model, code),
                                                   self.latency.labels(method, model))
        children[0].inc()
        children[1].observe(seconds)

    def track_in_flight(self, count) -> None:
        self.in_progress.set_function(count)

    def abandoned(self, method: str, code: str, seconds_late: float, cpu_late: float) -> None:
        self.abandoned_calls.labels(method, code).inc()
        self.after_deadline.labels(method).inc(seconds_late)
        self.cpu_after_deadline.labels(method).inc(cpu_late)

    def track_limits(self, budget, streams) -> None:
        """Gauges read from the memory budget (server/budget.py) and the stream guard (server/streams.py)."""
        self.budget_bytes.set_function(lambda: budget.in_use)
        self.streams_active.set_function(lambda: streams.active)
        budget.on_refuse = self.budget_refusals.inc

    def stream_ended(self, reason: str) -> None:
        self.streams_ended.labels(reason).inc()

    def bad_output(self, model: str) -> None:
        self.bad_outputs.labels(model).inc()

    def refused(self, method: str, code: str = "RESOURCE_EXHAUSTED") -> None:
        """A call answered before it reached its handler (server busy, a request over a limit)."""
        self.requests.labels(method, "-", code).inc()

    def set_models(self, registry) -> None:
        """The repository index as gauges (called after each scan and each load failure)."""
        for gauge in (self.loaded, self.state, self.resident, self.default, self.quality):
            gauge.clear()
        for e in registry.entries():
            v = str(e.version)
            self.state.labels(e.name, v, e.state, e.reason[:200]).set(1)
            self.resident.labels(e.name, v).set(1 if e.model is not None else 0)
            if e.state not in ("READY", "CANDIDATE"):
                continue
            self.loaded.labels(e.name, v, e.manifest["kind"]).set(1)
            for figure in GATED:
                value = (e.manifest.get("metrics") or {}).get(figure)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.quality.labels(e.name, v, figure).set(value)
            if registry.default_version(e.name) == e.version:
                self.default.labels(e.name).set(e.version)

    def serve(self, address: str, port: int) -> int:
        """Start the /metrics HTTP endpoint (its own thread); returns the bound port."""
        self.http = MetricsServer((address, port), make_wsgi_app(self.registry))
        threading.Thread(target=self.http.serve_forever, name="metrics", daemon=True).start()
        self.port = self.http.server_port
        return self.port

    def close(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None


class _QuietHandler(WSGIRequestHandler):
    timeout = METRICS_IDLE_S  # a connection silent this long is closed (the socket's timeout)

    def log_message(self, *args) -> None:  # (scrapes are not worth a log line)
        pass


class MetricsServer(ThreadingMixIn, WSGIServer):
    """prometheus_client's endpoint, bounded: its stock server kept a thread and a descriptor per
    idle connection for as long as the client wished (600 idle connections: 638 threads). Here a connection
    that sends nothing for METRICS_IDLE_S is closed, and past METRICS_CONNECTIONS at once a new one is closed
    on arrival."""

    daemon_threads = True
    request_queue_size = 128  # (socketserver's default backlog, 5, makes a burst of connects wait for SYN retries)

    def __init__(self, address: tuple[str, int], app):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._slots = threading.BoundedSemaphore(METRICS_CONNECTIONS)
        super().__init__(address, _QuietHandler)
        self.set_app(app)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any `extra=` fields."""

    _STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in self._STD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, fmt: str, worker: int | None = None) -> None:
    """`worker`: the index of a worker process (server --workers): text lines say "[worker i]", JSON lines
    carry "worker": i."""
    handler = logging.StreamHandler()
    tag = "" if worker is None else f"[worker {worker}] "
    handler.setFormatter(JsonFormatter() if fmt == "json"
                         else logging.Formatter(f"%(asctime)s %(levelname)s %(name)s: {tag}%(message)s"))
    if worker is not None:
        def add_worker(record: logging.LogRecord) -> bool:
            record.worker = worker
            return True

        handler.addFilter(add_worker)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
