"""The native front end (`frontend: native`): a Go gRPC server (gateway/) takes the calls on the public
address, and this process serves it on a private Unix socket.

Why: a Python gRPC server spends ~0.3 ms of CPU per call under one GIL whatever the call computes, so
single-sample traffic from many clients tops out at ~1 core of Python before the cores do (docs/bench.md).
The gateway does the HTTP/2 and gRPC work in Go on every core and gathers Sample and SampleConditional calls
into one SampleBatch message (server/gateway_backend.py, on a second private socket) each time this process has
room (at most `gateway_inflight` at once); every other call (streams, Interpolate, Invert, EvaluateDivergence, ListModels,
health, reflection) is relayed unchanged. The gateway never decodes a request: checks, latents, models,
errors and metrics stay here, so a call gets the same reply and the same status through either front end
(tests/test_frontend.py).

`NativeFrontend.run` starts this server on a socket in a private (0700) temporary folder (health
NOT_SERVING), then the gateway on the public address, then loads the store (SERVING: the gateway relays
health, so probes see the same states as with the Python front end). It restarts a gateway that dies
(gives up when it keeps dying right after its start), and on SIGTERM/SIGINT reports NOT_SERVING, stops the
gateway first (it drains its calls, which still need this process), then this server.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from server.app import App
from server.supervisor import QuickCrashes
from server.config import Config

log = logging.getLogger("ganserve.frontend")
ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "build" / "ganserve-gateway"  # `make gateway`


def find_gateway(config: Config) -> str:
    """The gateway executable: `gateway_binary`, else build/ganserve-gateway, else ganserve-gateway on PATH."""
    if config.gateway_binary:
        path = Path(config.gateway_binary)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FileNotFoundError(f"gateway_binary {path}: not an executable file")
        return str(path)
    if BUILT.is_file() and os.access(BUILT, os.X_OK):
        return str(BUILT)
    found = shutil.which("ganserve-gateway")
    if found:
        return found
    raise FileNotFoundError("frontend native needs the gateway executable: build it with `make gateway` (needs Go "
                            "and Debian's golang-google-grpc-dev; README, 'Native front end'), or set gateway_binary")


class NativeFrontend:
    """This server on a private socket behind the gateway on `config.address`."""

    def __init__(self, config: Config):
        self.config = config
        self.binary = find_gateway(config)
        self.dir = tempfile.mkdtemp(prefix="ganserve-")  # mode 0700: only this user reaches the backend
        try:
            self._prepare(config)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.listen = config.address  # after the first start: the port it got (for port 0)
        self.proc: subprocess.Popen | None = None
        self.metrics_url = ""  # the gateway's /metrics, when metrics are on
        self._started = 0.0
        self._stop = threading.Event()
        self._stopped = False

    def _prepare(self, config: Config) -> None:
        self.socket = os.path.join(self.dir, "backend.sock")  # gRPC: the calls the gateway relays
        self.batch_socket = os.path.join(self.dir, "batch.sock")  # the batches (server/gateway_backend.py)
        backend = dataclasses.replace(config, address=f"unix:{self.socket}", tls_cert="", tls_key="", tls_client_ca="")
        self.app = App(backend, batch_socket=self.batch_socket, public=config)  # bound, not started

    def command(self) -> list[str]:
        c = self.config
        cmd = [self.binary, "-listen", self.listen, "-backend", f"unix:{self.socket}", "-batch-socket", self.batch_socket,
               "-max-batch", str(c.gateway_max_batch), "-inflight", str(c.gateway_inflight),
               "-max-queue", str(c.max_concurrent_rpcs), "-max-message-bytes", str(c.max_message_bytes),
               "-max-request-bytes", str(c.max_request_bytes), "-max-upload-bytes", str(c.max_upload_bytes),
               "-max-connections", str(c.max_connections), "-connection-idle", f"{c.connection_idle_s}s",
               "-connection-max-age", f"{c.connection_max_age_s}s",
               "-connection-age-grace", f"{c.connection_age_grace_s}s",
               "-handshake-timeout", f"{c.handshake_timeout_s}s", "-keepalive", f"{c.keepalive_s}s",
               "-queue-timeout", f"{c.queue_timeout_ms}ms", "-drain", f"{c.drain_s}s", "-stop-on-stdin-eof"]
        if c.tls_cert:
            cmd += ["-tls-cert", c.tls_cert, "-tls-key", c.tls_key]
            if c.tls_client_ca:
                cmd += ["-tls-client-ca", c.tls_client_ca]
        if c.metrics_port >= 0:  # next to this server's: metrics_port + 1 (0: any free port)
            cmd += ["-metrics-listen", f"{c.metrics_address}:{c.metrics_port + 1 if c.metrics_port else 0}"]
        if c.token():
            cmd += ["-auth-token-stdin"]  # the first line on its stdin: never in a file or on a command line
        return cmd

    def _start_gateway(self) -> None:
        """Start the gateway and wait for its "listening on host:port" line (OSError if it exits instead)."""
        # stdin: a pipe this process holds; the token (if any) is its first line, then nothing more. When this
        # process ends, even by SIGKILL, the pipe closes and the gateway stops (it would otherwise hold the public
        # port in front of a dead backend). So the token is never in a file another process could find after a kill.
        # Its log goes to our stderr.
        proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.config.token():
            proc.stdin.write(self.config.token() + "\n")
            proc.stdin.flush()
        line = proc.stdout.readline()
        if line.startswith("ganserve-gateway metrics on "):
            self.metrics_url = line.split(" on ", 1)[1].strip()
            log.info("native front end: the gateway's Prometheus metrics on %s", self.metrics_url)
            line = proc.stdout.readline()
        prefix = "ganserve-gateway listening on "
        if not line.startswith(prefix):
            proc.wait()
            raise OSError(f"the gateway did not start on {self.listen} (exit {proc.returncode}); its error is above")
        bound = line[len(prefix):].strip()
        host = self.listen.rpartition(":")[0]
        self.listen = f"{host}:{bound.rpartition(':')[2]}"
        self.proc, self._started = proc, time.monotonic()
        log.info("native front end: gateway (pid %d) on %s, this server on unix:%s", proc.pid, self.listen,
                 self.socket)

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def start(self) -> "NativeFrontend":
        """This server (NOT_SERVING), the gateway, then the store (SERVING). OSError if the gateway cannot start."""
        self.app.server.start()
        self._start_gateway()
        self.app.load()
        return self

    def run(self) -> int:
        """`python -m server --frontend native`: serve until SIGTERM/SIGINT, restarting a gateway that dies."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        code, crashes = 0, QuickCrashes()
        try:
            self.start()
            log.info("listening on %s (port %d)", self.config.address, self.port)
            while not self._stop.wait(0.5):
                if self.proc.poll() is None:
                    continue
                lived = time.monotonic() - self._started
                log.error("the gateway (pid %d) exited with %s after %.1f s", self.proc.pid, self.proc.returncode, lived)
                if crashes.give_up(lived):
                    log.error("the gateway keeps dying right after its start; stopping (see the errors above)")
                    code = 1
                    break
                for pipe in (self.proc.stdin, self.proc.stdout):
                    pipe.close()
                self._start_gateway()
        except OSError as e:
            log.error("%s", e)
            code = 1
        finally:
            self.stop()
        return code

    def stop(self) -> None:
        """Stop the gateway (it drains its calls), then this server; remove the private folder. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._shutdown()

    def _shutdown(self) -> None:
        log.info("shutting down: draining in-flight requests for up to %.0f s", self.config.drain_s)
        self.app.health.enter_graceful_shutdown()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # the gateway refuses new calls and drains those in flight
            try:
                self.proc.wait(self.config.drain_s + 5)
            except subprocess.TimeoutExpired:
                log.error("the gateway (pid %d) did not stop in time; killing it", self.proc.pid)
                self.proc.kill()
                self.proc.wait(5)
        self.app.stop(grace=1.0)
        shutil.rmtree(self.dir, ignore_errors=True)
        log.info("stopped")
