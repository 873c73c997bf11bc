"""Issue 25 (security hardening) against real servers: nothing a client sends, with or without a token, can
grow the server for good or take it down. Servers run as `python -m server` subprocesses so their RSS is
theirs alone (psutil); the native front end's cases are in tests/test_frontend.py."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port
from tests.test_server_workers import _serving

ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20


def _rss_mb(proc: subprocess.Popen) -> float:
    return psutil.Process(proc.pid).memory_info().rss / MB


@pytest.fixture(scope="module")
def served(model_store):
    """(address, process) of a `python -m server` over the tiny store."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server", "--address", f"127.0.0.1:{port}",
                             "--store", str(model_store), "--metrics-port", "-1", "--reload-interval-s", "0",
                             "--log-level", "WARNING"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        _serving(address)
        yield address, proc
    finally:
        proc.terminate()
        proc.wait(20)


# -- F1: health answers only for the server's own names --------------------------------------------------------

def test_health_watch_and_check_on_huge_unknown_names_keep_nothing(served):
    address, proc = served
    big = "x" * MB  # 100 such names: +100 MB for good with the stock servicer
    with grpc.insecure_channel(address) as ch:
        health = health_pb2_grpc.HealthStub(ch)

        def ask(i: int):
            name = f"{i:04d}{big}"  # 100 distinct names
            for call in (health.Check, lambda r, timeout: next(health.Watch(r, timeout=timeout))):
                with pytest.raises(grpc.RpcError) as err:
                    call(health_pb2.HealthCheckRequest(service=name), timeout=20)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                assert err.value.details().startswith(f"unknown service '{i:04d}xxx")
                assert len(err.value.details()) < 300  # the name is not echoed back whole

        for i in range(20):  # warm-up: every thread of the pool has run (its stack, its allocator arena)
            ask(i)
        time.sleep(0.5)
        before = _rss_mb(proc)
        for i in range(20, 120):
            ask(i)
        time.sleep(0.5)
        after = _rss_mb(proc)
        assert -50 < after - before < 8, f"RSS {before:.0f} -> {after:.0f} MB after 100 huge unknown names"
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING


def test_health_watch_on_known_names_streams_the_status(served):
    address, _ = served
    with grpc.insecure_channel(address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", "ganserve.v1.GeneratorService"):
            watch = health.Watch(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
