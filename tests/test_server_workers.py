"""`python -m server --workers N`: N server processes on one address (SO_REUSEPORT) under a supervisor that
refuses a busy address, restarts a worker that dies and stops them all on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from server.supervisor import claim_port
from server.config import Config
from tests.conftest import free_port, sigterm_during_slow_stream

ROOT = Path(__file__).resolve().parent.parent


def _start(store: Path, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "server", "--address", f"127.0.0.1:{port}", "--store", str(store),
                             "--metrics-port", "-1", "--drain-s", "5", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The supervisor's live worker processes (not multiprocessing's resource tracker, not a dead one)."""
    out = []
    for kid in psutil.Process(proc.pid).children():
        try:
            if kid.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(kid.cmdline()):
                out.append(kid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return out


def _serving(address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        while time.monotonic() < deadline:
            try:
                if health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} not SERVING")


def _sample(channel: grpc.Channel, seed: int, timeout: float = 30) -> None:
    """One Sample; UNAVAILABLE is retried: a worker still loading the store answers it (as a lone server does)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = pb_grpc.GeneratorServiceStub(channel).Sample(pb.SampleRequest(model="tiny-gan", n=1, seed=seed),
                                                                 timeout=20)
            assert tensors.to_array(reply.samples).shape == (1, 1, 8, 8)
            return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _sample_on_new_connections(address: str, count: int) -> None:
    for i in range(count):
        # a channel of its own (no shared subchannel pool): a new TCP connection each time
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            _sample(ch, i)


def _served(worker: psutil.Process, port: int) -> bool:
    """Whether this worker holds (or held, in TIME_WAIT) a connection on the port: it accepted one."""
    return any(c.laddr and c.laddr.port == port and c.raddr for c in worker.net_connections(kind="tcp"))


def _listening(worker: psutil.Process, port: int) -> bool:
    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
               for c in worker.net_connections(kind="tcp"))


def _until(check, timeout_s: float, what: str) -> None:
    """Wait for `check()` (a worker binds only after its own start-up, which a busy machine slows down)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_workers_share_the_port_spread_connections_and_stop_together(model_store):
    port = free_port()
    proc = _start(model_store, port, "--workers", "2")
    try:
        _serving(f"127.0.0.1:{port}")
        workers = _workers(proc)
        assert len(workers) == 2
        _until(lambda: all(_listening(w, port) for w in workers), 120, "both workers listening on the port")
        # 24 connections: the kernel hashes each to one of the two listening sockets; all 24 on one worker
        # would happen with probability 2^-23. Connections are kept open meanwhile, so each is counted.
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(24)]
        try:
            for i, ch in enumerate(channels):
                _sample(ch, i)
            assert all(_served(w, port) for w in workers), "every worker accepted some of the connections"
        finally:
            for ch in channels:
                ch.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
        out = proc.stdout.read()
        assert "[worker 0]" in out and "[worker 1]" in out and out.rstrip().endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_supervisor_restarts_a_worker_that_dies(model_store):
    port = free_port()
    proc = _start(model_store, port, "--workers", "2")
    try:
        _serving(f"127.0.0.1:{port}")
        first = {w.pid for w in _workers(proc)}
        victim = psutil.Process(min(first))
        victim.kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = {w.pid for w in _workers(proc)}
            if len(now) == 2 and victim.pid not in now:
                break
            time.sleep(0.2)
        assert len(now) == 2 and victim.pid not in now and (first - {victim.pid}) <= now
        _sample_on_new_connections(f"127.0.0.1:{port}", 8)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        assert "exited with -9" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers_refuse_an_address_already_in_use(model_store):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _start(model_store, port, "--workers", "2")
        try:
            assert proc.wait(timeout=30) == 2  # a configuration error (server/preflight.py)
            out = proc.stdout.read()
            assert "Address already in use" in out and "Traceback" not in out and out.count("\n") == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with pytest.raises(OSError):
        with socket.socket() as s2:
            s2.bind(("127.0.0.1", 0))
            s2.listen()
            claim_port(f"127.0.0.1:{s2.getsockname()[1]}")
    assert claim_port("127.0.0.1:0") > 0  # port 0: a free port, chosen once for every worker


def test_workers_config_is_validated():
    with pytest.raises(ValueError, match="workers"):
        Config(workers=0)
    with pytest.raises(ValueError, match="workers"):
        Config(workers=65)


def test_workers_hot_reload_metrics_per_worker_and_drain_on_sigterm(tmp_path):
    """A version published while two workers run is served by both; worker i has metrics on port + i; a stream
    in flight when the supervisor gets SIGTERM runs to its end before the worker exits."""
    import urllib.request

    from tests.conftest import publish_gan

    store = tmp_path / "store"
    publish_gan(store, tmp_path / "build")
    port = free_port()
    with socket.socket() as a, socket.socket() as b:  # two adjacent free ports for the metrics
        a.bind(("127.0.0.1", 0))
        metrics = a.getsockname()[1]
        try:
            b.bind(("127.0.0.1", metrics + 1))
        except OSError:
            pytest.skip("no two adjacent free ports for the metrics endpoints")
    proc = subprocess.Popen([sys.executable, "-m", "server", "--address", f"127.0.0.1:{port}", "--store", str(store),
                             "--workers", "2", "--metrics-port", str(metrics), "--reload-interval-s", "0.2",
                             "--drain-s", "20"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _serving(f"127.0.0.1:{port}")
        _sample_on_new_connections(f"127.0.0.1:{port}", 4)
        publish_gan(store, tmp_path / "build2", seed=1)  # tiny-gan@2
        deadline, seen = time.monotonic() + 30, set()
        while time.monotonic() < deadline and seen != {"tiny-gan@2"}:
            seen = set()
            for _ in range(12):  # new connections: both workers answer some of them
                with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                    seen.add(pb_grpc.GeneratorServiceStub(ch).Sample(pb.SampleRequest(model="tiny-gan", n=1),
                                                                     timeout=20).model)
            time.sleep(0.2)
        assert seen == {"tiny-gan@2"}
        counts = []
        for p in (metrics, metrics + 1):
            text = urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=10).read().decode()
            counts.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                              if line.startswith('ganserve_requests_total{code="OK",method="Sample"')))
        assert all(c > 0 for c in counts) and sum(counts) >= 4 + 12  # every worker served, each counts its own
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            got = sigterm_during_slow_stream(pb_grpc.GeneratorServiceStub(ch), proc)
        assert got == list(range(0, 4096 * 40, 4096))
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
