"""`python -m server` with `workers` > 1: a supervisor and its server processes on one address.

One Python process serves at most ~1 core of per-request Python work (the GIL), so single-sample traffic from many
clients tops out before the cores do. The supervisor starts `workers` server processes on the same address with
SO_REUSEPORT: the kernel spreads incoming connections over them (a connection stays with one worker). Each worker
is a whole server (its own store scan and hot reload, batchers, admission limit, health) and serves Prometheus
metrics on `metrics_port + i`. The supervisor refuses an address already in use before starting any worker
(SO_REUSEPORT would otherwise let a second ganserve silently share the port), restarts a worker that dies, gives
up if workers keep dying within seconds of their start (a bad store, say), and on SIGTERM/SIGINT stops them all,
each draining.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time

from server.app import serve_one
from server.config import Config
from server.telemetry import setup_logging

log = logging.getLogger("ganserve.server")


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
