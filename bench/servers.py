"""Start and stop the servers under test as child processes on free loopback ports: ganserve
(`python -m server`) and TorchServe (the JVM frontend plus its Python workers). Both are context managers
that always stop what they started, and report their process tree's RSS and CPU time.

TorchServe notes (docs/design.md#facts-measured-on-this-machine): its stdout goes to a file, never a pipe (the launcher hands it to
the JVM, which blocks when nobody reads); token auth is disabled for these loopback-only instances; logs
are lowered from DEBUG to WARN with our own log4j2 config; TMPDIR and the working directory point into a
private folder, because the launcher keeps its pid file in the temp dir and key_file.json in the working
directory (two instances would otherwise see each other). `--foreground` keeps the launcher alive, so the
whole tree is one process group we own and can stop by its id.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent

LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{log}"><PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/></File>
  </Appenders>
  <Loggers>
    <Root level="warn"><AppenderRef ref="file"/></Root>
    <Logger name="ACCESS_LOG" level="off" additivity="false"/>
    <Logger name="MODEL_LOG" level="warn" additivity="false"><AppenderRef ref="file"/></Logger>
    <Logger name="TS_METRICS" level="off" additivity="false"/>
    <Logger name="MODEL_METRICS" level="off" additivity="false"/>
  </Loggers>
</Configuration>
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_usage(pid: int) -> dict:
    """RSS (bytes) and CPU seconds (user + system) of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"rss": 0, "cpu_s": 0.0, "processes": 0}
    rss, cpu, count = 0, 0.0, 0
    for p in procs:
        try:
            with p.oneshot():
                rss += p.memory_info().rss
                t = p.cpu_times()
                cpu += t.user + t.system
                count += 1
        except psutil.NoSuchProcess:
            pass
    return {"rss": rss, "cpu_s": cpu, "processes": count}


def _stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group we created for `proc` (its pid is the group id), then SIGKILL leftovers."""
    if proc.poll() is not None and not _alive_descendants(proc):
        return
    try:
        family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        family = [proc.pid]
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(psutil.pid_exists(p) and _not_zombie(p) for p in family):
        proc.poll()
        time.sleep(0.1)
    for pid in family:  # anything left of what we started: SIGKILL by id
        if psutil.pid_exists(pid) and _not_zombie(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _alive_descendants(proc: subprocess.Popen) -> bool:
    try:
        return bool(psutil.Process(proc.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return False


class Ganserve:
    """`python -m server` on a free loopback port, serving `store`; ready when health says SERVING."""

    def __init__(self, store: Path, *, args: tuple[str, ...] = (), log: Path | None = None, ready_timeout=120.0,
                 entry: tuple[str, ...] = ("-m", "server")):
        """`entry`: what python runs (default `-m server`; a script that patches the server for an experiment
        and then calls server.__main__.main takes the same flags)."""
        self.store, self.args, self.ready_timeout, self.entry = Path(store), tuple(args), ready_timeout, tuple(entry)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._log = log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Ganserve:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self._log_file = open(self._log, "ab") if self._log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, *self.entry, "--address", self.address, "--store", str(self.store),
             "--reload-interval-s", "0", "--log-level", "WARNING", *self.args],
            cwd=ROOT, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            with grpc.insecure_channel(self.address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                deadline = time.monotonic() + self.ready_timeout
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"ganserve exited with {self.proc.returncode} before it was ready "
                                           f"(log: {self._log})")
                    try:
                        status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                        if status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"ganserve not SERVING after {self.ready_timeout:.0f} s")
                    time.sleep(0.2)
        except BaseException:
            self.__exit__()
            raise
        return self

    def usage(self) -> dict:
        return tree_usage(self.proc.pid)

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
        if self._log_file is not subprocess.DEVNULL:
            self._log_file.close()


class TorchServe:
    """TorchServe serving the .mar files in `mar_dir` (`models` maps registered name -> .mar file name;
    the name inside the archive must be the same), on free loopback ports, until the context exits."""

    def __init__(self, mar_dir: Path, models: dict[str, str], *, workdir: Path | None = None,
                 ready_timeout: float = 180.0, env: dict[str, str] | None = None):
        self.mar_dir, self.models, self.ready_timeout = Path(mar_dir), dict(models), ready_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="torchserve-"))
        self.inference_port, self.management_port, self.metrics_port = free_port(), free_port(), free_port()
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    def predictions_url(self, name: str) -> str:
        return f"{self.url}/predictions/{name}"

    def __enter__(self) -> TorchServe:
        w = self.workdir
        (w / "tmp").mkdir(parents=True, exist_ok=True)
        (w / "log4j2.xml").write_text(LOG4J2.format(log=w / "ts.log"))
        (w / "config.properties").write_text("\n".join([
            f"inference_address=http://127.0.0.1:{self.inference_port}",
            f"management_address=http://127.0.0.1:{self.management_port}",
            f"metrics_address=http://127.0.0.1:{self.metrics_port}",
            f"model_store={self.mar_dir}",
            "disable_token_authorization=true",
            "disable_system_metrics=true",       # no metrics-collector process waking every minute
            "install_py_dep_per_model=false",
            "job_queue_size=1000",
            "default_response_timeout=120",
            "async_logging=true",
            f"vmargs=-Xmx2g -XX:+UseG1GC -Djava.io.tmpdir={w / 'tmp'}",
            "",
        ]))
        env = dict(os.environ, TMPDIR=str(w / "tmp"), TEMP=str(w / "tmp"), LOG_LOCATION=str(w / "logs"),
                   METRICS_LOCATION=str(w / "logs"), **self.env)
        torchserve = Path(sys.executable).parent / "torchserve"
        cmd = [str(torchserve), "--start", "--foreground", "--ncs", "--disable-token-auth",
               "--model-store", str(self.mar_dir), "--ts-config", str(w / "config.properties"),
               "--log-config", str(w / "log4j2.xml"),
               "--models", *(f"{name}={mar}" for name, mar in self.models.items())]
        self._out = open(w / "stdout.log", "wb")  # never a pipe (see the module docstring)
        self.proc = subprocess.Popen(cmd, cwd=w, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        pending = set(self.models)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"torchserve exited with {self.proc.returncode}; see {self.workdir}/stdout.log "
                                   f"and ts.log")
            for name in sorted(pending):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.management_port}/models/{name}",
                                                timeout=2) as r:
                        info = json.loads(r.read())
                    workers = info[0].get("workers", [])
                    if workers and all(wk.get("status") == "READY" for wk in workers):
                        pending.discard(name)
                except (urllib.error.URLError, OSError, ValueError, IndexError, KeyError):
                    pass
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"TorchServe models {sorted(pending)} not READY after {self.ready_timeout:.0f} s; "
                                   f"see {self.workdir}/ts.log")
            time.sleep(0.3)

    def describe(self, name: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.management_port}/models/{name}", timeout=5) as r:
            return json.loads(r.read())[0]

    def usage(self) -> dict:
        return tree_usage(self.proc.pid)

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
        self._out.close() if hasattr(self, "_out") else None
        if self._own_workdir:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
