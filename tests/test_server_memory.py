"""The memory budget (server/budget.py): requests and replies in flight are bounded, a call over the budget is
RESOURCE_EXHAUSTED at once, RSS comes back; undecodable bytes are INVALID_ARGUMENT. Over a real `python -m
server` process (its RSS measured with psutil) and the in-process test server."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter

import grpc
import numpy as np
import psutil
import pytest

from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from tests.conftest import ROOT, free_port

MIB = 1 << 20
LIMIT_MB, BUDGET_MB, CALLS = 8, 256, 16


class PeakRss(threading.Thread):
    """The largest RSS of `pid`, sampled every 10 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc, self.peak, self._done = psutil.Process(pid), 0, threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def stop(self) -> int:
        self._done.set()
        self.join(5)
        return self.peak


@pytest.fixture
def server_process(model_store):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server", "--address", f"127.0.0.1:{port}", "--store",
                             str(model_store), "--metrics-port", "-1", "--reload-interval-s", "0",
                             "--max-message-bytes", str(LIMIT_MB * MIB), "--memory-budget-mb", str(BUDGET_MB)],
                            cwd=ROOT, stderr=subprocess.DEVNULL)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * MIB)])
    try:
        grpc.channel_ready_future(channel).result(timeout=60)
        yield proc, pb_grpc.GeneratorServiceStub(channel)
    finally:
        channel.close()
        proc.terminate()
        proc.wait(30)


def test_sixteen_near_limit_requests_keep_rss_within_the_budget(server_process):
    """16 EvaluateDivergence calls with two [4900, 200] uploads (7.5 MiB, under the 8 MiB limit) at once: without
    the budget they took the server +1.8 GB (the estimators' working memory, ~110 MB each) and kept +370 MB. With
    a 256 MB budget (each such request charged 16x its size) the excess is refused RESOURCE_EXHAUSTED at once,
    peak RSS stays under the budget plus the stated overhead (gRPC's receive buffers: one message per call
    being received), and RSS comes back near its baseline (within 160 MB, against +370 MB kept before)."""
    proc, stub = server_process
    x = np.random.default_rng(0).normal(size=(4900, 200)).astype(np.float32)
    request = pb.EvaluateDivergenceRequest(p=pb.DataSource(samples=tensors.from_array(x)),
                                           q=pb.DataSource(samples=tensors.from_array(x + 0.1)),
                                           metrics=["sliced_w"], n=5000, bootstrap=0, seed=1)
    assert 7 * MIB < request.ByteSize() < LIMIT_MB * MIB
    for _ in range(2):  # one-time costs (estimator imports, first-use arenas) before the baseline
        stub.EvaluateDivergence(request, timeout=300)
    time.sleep(1.0)
    baseline = psutil.Process(proc.pid).memory_info().rss
    sampler = PeakRss(proc.pid)
    sampler.start()
    results: list[tuple[str, float]] = []

    def call():
        t0 = time.perf_counter()
        try:
            stub.EvaluateDivergence(request, timeout=300)
            results.append(("OK", time.perf_counter() - t0))
        except grpc.RpcError as e:
            results.append((e.code().name, time.perf_counter() - t0))
            assert e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or "memory budget" in e.details()

    threads = [threading.Thread(target=call) for _ in range(CALLS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    time.sleep(2.0)
    peak = sampler.stop()
    after = psutil.Process(proc.pid).memory_info().rss
    codes = Counter(code for code, _ in results)
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"} and codes["OK"] >= 1 and codes["RESOURCE_EXHAUSTED"] >= 8, codes
    refusals = sorted(s for code, s in results if code == "RESOURCE_EXHAUSTED")
    served = sorted(s for code, s in results if code == "OK")
    # refused as soon as its bytes are in, not after the work: the median refusal is back before the first served
    # call (0.4-2 s against 3-6 s here; on a faster CI machine 0.30 s against 0.59 s)
    assert refusals[len(refusals) // 2] < served[0], (refusals, served)
    overhead = CALLS * LIMIT_MB * MIB  # receive buffers
    assert 0 < peak - baseline < BUDGET_MB * MIB + overhead, f"peak +{(peak - baseline) / MIB:.0f} MB"
    # measured 2 s after: +7 to +122 MB over runs on the shared machine (the allocator's and gRPC's caches vary);
    # without the budget it kept +370 MB
    assert after - baseline < 160 * MIB, f"after +{(after - baseline) / MIB:.0f} MB"


def test_undecodable_request_bytes_are_invalid_argument(server):
    """Bytes that are no SampleRequest were gRPC's INTERNAL "Exception deserializing request!"."""
    with grpc.insecure_channel(server.target) as channel:
        raw = channel.unary_unary("/ganserve.v1.GeneratorService/Sample", request_serializer=None,
                                  response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid ganserve.v1.SampleRequest" in err.value.details()
        ok = pb.SampleRequest.SerializeToString(pb.SampleRequest(model="tiny-gan", n=1, seed=1))
        assert pb.SampleResponse.FromString(raw(ok, timeout=10)).model == "tiny-gan@1"


def _until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_budget_refuses_a_reply_it_has_no_room_for(model_store):
    """A Sample whose reply (3x its float32 samples) does not fit beside another call's charge is refused
    before the model runs; alone, the same call is served (the only call in flight is never refused)."""
    from server.budget import MiB
    from tests.conftest import start_server

    running = start_server(model_store, reload_interval_s=0, metrics_port=-1, memory_budget_mb=1)
    try:
        budget = running.app.budget
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.GeneratorServiceStub(channel)
            request = pb.SampleRequest(model="tiny-gan", n=1024, seed=1)  # 256 KiB of samples, charged 768 KiB
            assert len(tensors.to_array(stub.Sample(request, timeout=30).samples)) == 1024
            _until(lambda: budget.in_use == 0)  # released when the call ends (just after the reply was sent)
            assert budget._take(MiB // 2)  # another call holds half the budget
            with pytest.raises(grpc.RpcError) as err:
                stub.Sample(request, timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "reply or working memory" in err.value.details()
            budget._give([MiB // 2, 0])  # [held, the request's share]: as a Charge keeps it
            _until(lambda: budget.in_use == 0)
    finally:
        running.app.stop(0)
