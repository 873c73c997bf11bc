"""Hot reload, bad model versions, deletion while serving, the batcher's backpressure and deadlines, stream flow
control, TLS, token auth and SIGTERM drain - over real servers (and the Batcher on its own where timing must
be exact)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from server.batcher import Batcher, Result
from server.errors import Cancelled, DeadlineExceeded, ResourceExhausted
from tests.conftest import free_port, publish_gan, sigterm_during_slow_stream, start_server

ROOT = Path(__file__).resolve().parent.parent


def _stub(target: str) -> tuple[grpc.Channel, pb_grpc.GeneratorServiceStub]:
    channel = grpc.insecure_channel(target)
    return channel, pb_grpc.GeneratorServiceStub(channel)


def _wait(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _corrupt_copy(store: Path, version: int, how: str) -> None:
    """Make tiny-gan/<version> a broken copy of version 1 (written under a temporary name, then renamed)."""
    src, tmp = store / "tiny-gan" / "1", store / "tiny-gan" / f".tmp-{version}"
    shutil.copytree(src, tmp)
    m = json.loads((tmp / "manifest.json").read_text())
    m["version"] = version
    if how == "checksum":
        (tmp / "generator.onnx").write_bytes((tmp / "generator.onnx").read_bytes() + b"\0")
    elif how == "truncated":
        data = (tmp / "generator.onnx").read_bytes()[:200]
        (tmp / "generator.onnx").write_bytes(data)
        import hashlib
        m["files"]["generator.onnx"] = hashlib.sha256(data).hexdigest()
    elif how == "inputs":
        m["graphs"]["generator"]["inputs"][0]["name"] = "latent"
    elif how == "outputs":
        m["graphs"]["generator"]["outputs"][0]["dims"] = m["output"]["shape"] = [1, 9, 9]
    elif how == "missing":
        (tmp / "critic.onnx").unlink()
    (tmp / "manifest.json").write_text(json.dumps(m) if how != "manifest" else json.dumps(m)[:-20])
    os.rename(tmp, store / "tiny-gan" / str(version))


# -- the model store --------------------------------------------------------------------------------------

def test_invalid_versions_are_skipped_at_start_up(tmp_path, caplog):
    store = tmp_path / "store"
    publish_gan(store, tmp_path / "build")
    for version, how in ((2, "checksum"), (3, "truncated"), (4, "inputs"), (5, "missing"), (6, "outputs")):
        _corrupt_copy(store, version, how)
    (store / "tiny-gan" / ".tmp-interrupted").mkdir()  # an interrupted publish
    with caplog.at_level(logging.ERROR, logger="ganserve.registry"):
        running = start_server(store, reload_interval_s=0, metrics_port=-1)
    try:
        channel, stub = _stub(running.target)
        info = stub.GetModel(pb.GetModelRequest(model="tiny-gan"))
        assert info.version == 1 and list(info.available_versions) == [1]
        text = caplog.text
        assert "tiny-gan@2" in text and "sha256" in text
        assert "tiny-gan@3" in text and "ONNX Runtime cannot load it" in text
        assert "tiny-gan@4" in text and "inputs ['latent'] != the ONNX graph's inputs ['z']" in text
        assert "tiny-gan@5" in text and "missing file critic.onnx" in text
        assert "tiny-gan@6" in text and "manifest dims [1, 9, 9]" in text
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModel(pb.GetModelRequest(model="tiny-gan@2"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        channel.close()
    finally:
        running.app.stop(0)


def test_hot_reload_while_serving(tmp_path):
    store = tmp_path / "store"
    publish_gan(store, tmp_path / "build")
    running = start_server(store, reload_interval_s=0.1, metrics_port=-1)
    errors, stop = [], threading.Event()
    channel, stub = _stub(running.target)

    def hammer():
        while not stop.is_set():
            try:
                stub.Sample(pb.SampleRequest(model="tiny-gan", n=4, seed=1))
            except grpc.RpcError as e:
                errors.append(e.code())

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        v1 = stub.Sample(pb.SampleRequest(model="tiny-gan", n=4, seed=1)).samples
        publish_gan(store, tmp_path / "build2", seed=1)  # version 2, other weights
        _wait(lambda: stub.GetModel(pb.GetModelRequest(model="tiny-gan")).version == 2, what="version 2")
        v2 = stub.Sample(pb.SampleRequest(model="tiny-gan", n=4, seed=1))
        assert v2.model == "tiny-gan@2" and v2.samples != v1
        assert stub.Sample(pb.SampleRequest(model="tiny-gan@1", n=4, seed=1)).samples == v1

        _corrupt_copy(store, 3, "checksum")  # a bad newer version never replaces a good one
        index = lambda: {(m.name, m.version): m for m in stub.ListModels(pb.ListModelsRequest(index=True)).models}  # noqa: E731
        _wait(lambda: ("tiny-gan", 3) in index(), what="the scan to see version 3")  # seen, not just waited for
        assert index()[("tiny-gan", 3)].state == pb.VERSION_STATE_UNAVAILABLE
        assert "sha256" in index()[("tiny-gan", 3)].state_reason
        assert stub.GetModel(pb.GetModelRequest(model="tiny-gan")).version == 2

        shutil.rmtree(store / "tiny-gan" / "2")  # deleted while served: later requests get the remaining version
        _wait(lambda: stub.GetModel(pb.GetModelRequest(model="tiny-gan")).version == 1, what="fallback to 1")
        with pytest.raises(grpc.RpcError) as err:
            stub.Sample(pb.SampleRequest(model="tiny-gan@2", n=1))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "served: [1]" in err.value.details()
    finally:
        stop.set()
        for t in threads:
            t.join()
        channel.close()
        running.app.stop(0)
    assert errors == []  # nothing failed while versions came and went


FAULTS = {"checksum": "sha256", "truncated": "ONNX Runtime cannot load it", "missing": "missing file critic.onnx",
          "manifest": "manifest.json: not valid JSON"}


@pytest.mark.parametrize("how", sorted(FAULTS))
def test_a_broken_version_published_while_serving_is_skipped(tmp_path, caplog, how):
    store = tmp_path / "store"
    publish_gan(store, tmp_path / "build")
    running = start_server(store, reload_interval_s=0.1, metrics_port=-1)
    channel, stub = _stub(running.target)
    try:
        before = stub.Sample(pb.SampleRequest(model="tiny-gan", n=2, seed=1))
        with caplog.at_level(logging.ERROR, logger="ganserve.registry"):
            _corrupt_copy(store, 2, how)
            _wait(lambda: "skipping tiny-gan@2" in caplog.text, what="the broken version to be skipped")
        assert FAULTS[how] in caplog.text
        after = stub.Sample(pb.SampleRequest(model="tiny-gan", n=2, seed=1))
        assert after.model == "tiny-gan@1" and after.samples == before.samples
        assert list(stub.GetModel(pb.GetModelRequest(model="tiny-gan")).available_versions) == [1]
        publish_gan(store, tmp_path / "build3", seed=1)  # reloading goes on: the next good version is served
        _wait(lambda: stub.GetModel(pb.GetModelRequest(model="tiny-gan")).version == 3, what="version 3")
    finally:
        channel.close()
        running.app.stop(0)


def test_sigkill_of_the_server_loses_no_published_model(model_store, tmp_path):
    import hashlib

    store = tmp_path / "store"
    shutil.copytree(model_store, store)
    digest = lambda: {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                      for p in sorted(store.rglob("*")) if p.is_file()}
    before = digest()
    port = free_port()
    cmd = [sys.executable, "-m", "server", "--address", f"127.0.0.1:{port}", "--store", str(store),
           "--metrics-port", "-1", "--reload-interval-s", "0.1"]
    for attempt in range(2):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            channel, stub = _stub(f"127.0.0.1:{port}")
            _wait(lambda: _serving(channel), 60, "SERVING")
            served = {m.name: m.version for m in stub.ListModels(pb.ListModelsRequest()).models}
            assert served == {"tiny-cgan": 1, "tiny-eval": 1, "tiny-gan": 1, "tiny-points": 1}
            stream = stub.SampleStream(pb.SampleStreamRequest(model="tiny-gan", n=4096 * 50, seed=1, chunk_size=4096))
            next(stream)  # killed in the middle of a call and of its store polling
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            channel.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert digest() == before  # the server never writes to the store: nothing to lose


def _serving(channel) -> bool:
    try:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
            health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def test_in_flight_request_finishes_when_its_version_is_deleted(tmp_path):
    store = tmp_path / "store"
    publish_gan(store, tmp_path / "build")
    running = start_server(store, reload_interval_s=0.05, metrics_port=-1)
    channel, stub = _stub(running.target)
    try:
        images = tensors.from_array(np.zeros((64, 1, 8, 8), np.float32))
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("r", stub.Invert(pb.InvertRequest(
            model="tiny-gan", images=images, method=pb.OPTIMIZE, steps=300))))
        t.start()
        time.sleep(0.05)
        shutil.rmtree(store / "tiny-gan" / "1")
        t.join(30)
        assert result["r"].model == "tiny-gan@1" and len(result["r"].mse) == 64
        _wait(lambda: not running.app.registry.models(), what="the deleted version to go")
        with pytest.raises(grpc.RpcError) as err:
            stub.Sample(pb.SampleRequest(model="tiny-gan", n=1))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()
        running.app.stop(0)


def test_empty_and_missing_store_still_serve_health(tmp_path):
    running = start_server(tmp_path / "does-not-exist", reload_interval_s=0, metrics_port=-1)
    try:
        with grpc.insecure_channel(running.target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.GeneratorServiceStub(channel).Sample(pb.SampleRequest(n=1))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        running.app.stop(0)


# -- batcher: backpressure, deadlines, cancellation -------------------------------------------------------

class _Gate:
    """A run function that blocks until released, counting the rows it ran."""

    def __init__(self):
        self.release = threading.Event()
        self.calls: list[int] = []

    def __call__(self, feeds):
        self.release.wait(10)
        self.calls.append(len(feeds["z"]))
        return feeds["z"] * 2


def _feeds(n: int, value: float = 1.0):
    return {"z": np.full((n, 2), value, np.float32)}


def test_result_is_a_one_shot_future_for_every_waiter():
    """server.batcher.Result, the batcher's light future: waits, times out, hands the value (or the error) to
    every waiter and to later calls."""
    from concurrent.futures import TimeoutError as FutureTimeout

    r = Result()
    assert not r.done()
    t0 = time.monotonic()
    with pytest.raises(FutureTimeout):
        r.result(timeout=0.05)
    assert 0.04 < time.monotonic() - t0 < 2
    got = []
    waiters = [threading.Thread(target=lambda: got.append(r.result(5))) for _ in range(3)]
    for w in waiters:
        w.start()
    time.sleep(0.05)
    r.set_result(7)
    for w in waiters:
        w.join(5)
    assert got == [7, 7, 7] and r.done() and r.result(0) == 7 and r.result() == 7
    bad = Result()
    bad.set_exception(Cancelled("gone"))
    for _ in range(2):
        with pytest.raises(Cancelled):
            bad.result(1)


def test_batcher_overflow_is_rejected_at_once():
    gate = _Gate()
    b = Batcher("m", gate, max_batch=8, max_queue=2, max_delay_s=0, queue_timeout_s=10)
    try:
        first = b.submit(_feeds(1))  # taken by the worker, blocked in run
        _wait(lambda: b.depth() == 0, what="the worker to take the first request")
        queued = [b.submit(_feeds(1, v)) for v in (2.0, 3.0)]
        t0 = time.perf_counter()
        with pytest.raises(ResourceExhausted, match="queue full"):
            b.submit(_feeds(1))
        # at once: a refusal that waited for room would wait for the gate (held until released below) or the
        # 10 s queue timeout; 1 s is far below both and far above a busy machine's scheduling noise
        assert time.perf_counter() - t0 < 1.0
        gate.release.set()
        assert first.result(5)[0, 0] == 2.0
        assert [q.result(5)[0, 0] for q in queued] == [4.0, 6.0]
        assert gate.calls == [1, 2]  # the two queued requests ran as one batch
    finally:
        gate.release.set()
        b.close()


def test_batcher_drops_expired_and_cancelled_requests():
    gate = _Gate()
    b = Batcher("m", gate, max_batch=8, max_queue=8, max_delay_s=0, queue_timeout_s=0.2)
    try:
        b.submit(_feeds(1))
        _wait(lambda: b.depth() == 0, what="the worker to take the first request")
        expired = b.submit(_feeds(1), deadline=time.monotonic() + 0.01)
        cancelled = b.submit(_feeds(1), is_active=lambda: False)
        timed_out = b.submit(_feeds(1))
        time.sleep(0.3)
        gate.release.set()
        with pytest.raises(DeadlineExceeded):
            expired.result(5)
        with pytest.raises(Cancelled):
            cancelled.result(5)
        with pytest.raises(ResourceExhausted, match="queue timeout"):
            timed_out.result(5)
        assert gate.calls == [1]  # none of the three cost a run
    finally:
        gate.release.set()
        b.close()


def test_batcher_runs_interactive_requests_before_queued_bulk_work():
    gate = _Gate()
    b = Batcher("m", gate, max_batch=4, max_queue=8, max_delay_s=0, queue_timeout_s=10, bulk_max_wait_s=0.3)
    try:
        b.submit(_feeds(1))
        _wait(lambda: b.depth() == 0, what="the worker to take the first request")
        chunks = [b.submit(_feeds(4, v), bulk=True) for v in (1.0, 2.0)]  # a stream's chunks, queued first
        small = b.submit(_feeds(2, 3.0))
        gate.release.set()
        assert small.result(5)[0, 0] == 6.0 and [c.result(5)[0, 0] for c in chunks] == [2.0, 4.0]
        assert gate.calls == [1, 2, 4, 4]  # the interactive request ran right after the run in progress
        # one overdue bulk chunk goes first (streams keep moving), then interactive requests again
        gate.release.clear()
        gate.calls.clear()
        b.submit(_feeds(1))
        _wait(lambda: b.depth() == 0, what="the worker to take the request")
        old = [b.submit(_feeds(4, v), bulk=True) for v in (5.0, 7.0)]
        time.sleep(0.4)
        new = b.submit(_feeds(2, 6.0))
        gate.release.set()
        assert [o.result(5)[0, 0] for o in old] == [10.0, 14.0] and new.result(5)[0, 0] == 12.0
        assert gate.calls == [1, 4, 2, 4]
    finally:
        gate.release.set()
        b.close()


def test_idle_fast_path_runs_on_the_caller_and_batches_what_arrives_meanwhile():
    """inline_when_idle: an idle model runs a request on the caller's thread (no hand-off); requests arriving
    while it runs queue and the worker runs them as one batch; bulk work and a queue delay never go inline."""
    threads, gate = [], _Gate()

    def run(feeds):
        threads.append(threading.current_thread().name)
        return gate(feeds)

    b = Batcher("m", run, max_batch=8, max_queue=8, max_delay_s=0, queue_timeout_s=10, inline_when_idle=True)
    try:
        gate.release.set()
        assert b.submit(_feeds(1, 3.0)).done()  # ran during submit
        assert threads == [threading.current_thread().name] and gate.calls == [1]
        gate.release.clear()
        first: list = []
        caller = threading.Thread(target=lambda: first.append(b.submit(_feeds(1))), name="caller")
        caller.start()
        _wait(lambda: len(threads) == 2, what="the inline run to start")
        queued = [b.submit(_feeds(1, v)) for v in (2.0, 3.0)]  # the model is busy: these queue
        assert not any(q.done() for q in queued) and b.depth() == 2
        gate.release.set()
        caller.join(5)
        assert first[0].result(5)[0, 0] == 2.0 and [q.result(5)[0, 0] for q in queued] == [4.0, 6.0]
        assert threads[1] == "caller" and threads[2].startswith("batcher-") and gate.calls == [1, 1, 2]
        assert b.submit(_feeds(2), bulk=True).result(5).shape == (2, 2) and threads[-1].startswith("batcher-")
    finally:
        gate.release.set()
        b.close()
    delayed = Batcher("m", run, max_batch=8, max_queue=8, max_delay_s=0.001, queue_timeout_s=10, inline_when_idle=True)
    try:
        assert not delayed.inline_when_idle
        delayed.submit(_feeds(1)).result(5)
        assert threads[-1].startswith("batcher-")
    finally:
        delayed.close()


def test_idle_path_runs_small_requests_on_the_idle_runner_only():
    """run_idle (the server's 2-thread session): a small request that finds the model idle, with no other RPC in
    flight, runs on it; a large idle one is split across the runners as before; queued requests and bulk work run
    on the batcher's runner."""
    calls, gate = [], _Gate()

    def run(feeds):
        calls.append(("run", len(feeds["z"])))
        return gate(feeds)

    def run_idle(feeds):
        calls.append(("idle", len(feeds["z"])))
        return feeds["z"] * 2

    b = Batcher("m", run, max_batch=128, max_queue=8, max_delay_s=0, queue_timeout_s=10, inline_when_idle=True,
                runners=2, split_rows=64, split_s=0.0, run_idle=run_idle)
    try:
        gate.release.set()
        assert b.submit(_feeds(1, 3.0)).result(5)[0, 0] == 6.0
        assert b.submit(_feeds(63)).result(5).shape == (63, 2)
        assert b.submit(_feeds(64)).result(5).shape == (64, 2)
        assert calls[:2] == [("idle", 1), ("idle", 63)]
        assert ("idle", 64) not in calls and sum(n for k, n in calls[2:] if k == "run") == 64
        calls.clear()
        gate.release.clear()
        first: list = []
        caller = threading.Thread(target=lambda: first.append(b.submit(_feeds(64))), name="caller")
        caller.start()
        _wait(lambda: len(calls) >= 1, what="the inline run to start")
        queued = b.submit(_feeds(1, 5.0))  # the model is busy: queued for the worker, which uses `run`
        gate.release.set()
        caller.join(5)
        assert queued.result(5)[0, 0] == 10.0 and b.submit(_feeds(2), bulk=True).result(5).shape == (2, 2)
        assert calls[-2:] == [("run", 1), ("run", 2)] and not any(k == "idle" for k, _ in calls)
    finally:
        gate.release.set()
        b.close()
    others = [True]  # another RPC in flight: an idle small request still runs inline, but on one thread
    b = Batcher("m", run, max_batch=128, max_queue=8, max_delay_s=0, queue_timeout_s=10, inline_when_idle=True,
                run_idle=run_idle, alone=lambda: not others[0])
    try:
        calls.clear()
        assert b.submit(_feeds(1)).done() and calls == [("run", 1)]
        others[0] = False
        assert b.submit(_feeds(1)).done() and calls == [("run", 1), ("idle", 1)]
    finally:
        b.close()


def test_batcher_splits_a_request_larger_than_a_batch():
    runs = []
    b = Batcher("m", lambda f: runs.append(len(f["z"])) or f["z"] + 1, max_batch=4, max_queue=4, max_delay_s=0,
                queue_timeout_s=10)
    try:
        out = b.submit({"z": np.arange(10, dtype=np.float32)[:, None]}).result(5)
        np.testing.assert_array_equal(out[:, 0], np.arange(10) + 1)
        assert runs == [4, 4, 2]
    finally:
        b.close()


def test_overload_over_grpc_is_resource_exhausted_at_once(model_store):
    # The batcher waits 3 s for more rows, so the first request sits in the queue of 1.
    running = start_server(model_store, reload_interval_s=0, metrics_port=-1, max_queue_size=1,
                           max_queue_delay_ms=3000)
    channel, stub = _stub(running.target)
    try:
        holder = threading.Thread(target=lambda: stub.Sample(pb.SampleRequest(model="tiny-gan", n=1, seed=1)))
        holder.start()
        _wait(lambda: running.app.registry.resolve("tiny-gan").batcher.depth() == 1, what="a queued request")
        t0 = time.perf_counter()
        with pytest.raises(grpc.RpcError) as err:
            stub.Sample(pb.SampleRequest(model="tiny-gan", n=1, seed=2))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue full" in err.value.details()
        # at once: a refusal that waited for room would wait for the queued request's 3 s delay
        assert time.perf_counter() - t0 < 1.5
        holder.join(10)
        with grpc.insecure_channel(running.target) as ch:
            assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status == \
                health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
        running.app.stop(0)


def test_calls_over_max_concurrent_rpcs_are_refused_at_once_and_health_stays_open(model_store):
    running = start_server(model_store, reload_interval_s=0, max_concurrent_rpcs=2, stream_share=1.0)
    channel, stub = _stub(running.target)
    streams = []
    try:
        # Two streams whose reader does not read: each holds its handler thread (HTTP/2 flow control); streams may
        # take every slot here (stream_share 1; tests/test_server_streams.py has the default share).
        for seed in (1, 2):
            streams.append(stub.SampleStream(pb.SampleStreamRequest(model="tiny-gan", n=4096 * 200, seed=seed,
                                                                    chunk_size=4096)))
            next(streams[-1])
        _wait(lambda: running.app.pool.in_flight == 2, what="two calls in progress")
        seconds = []
        for _ in range(5):
            t0 = time.perf_counter()
            with pytest.raises(grpc.RpcError) as err:
                stub.Sample(pb.SampleRequest(model="tiny-gan", n=1, seed=3), timeout=5)
            seconds.append(time.perf_counter() - t0)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "server busy: 2 calls in progress (max_concurrent_rpcs)" in err.value.details()
        # refused, not timed out (the deadline is 5 s); milliseconds typically, a shared machine aside
        assert sorted(seconds)[2] < 0.1 and max(seconds) < 2, seconds
        with grpc.insecure_channel(running.target) as ch:  # probes are never refused
            for _ in range(5):
                assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                    health_pb2.HealthCheckResponse.SERVING
        refused = running.app.telemetry.registry.get_sample_value(
            "ganserve_requests_total", {"method": "Sample", "model": "-", "code": "RESOURCE_EXHAUSTED"})
        assert refused == 5
        assert running.app.telemetry.registry.get_sample_value("ganserve_calls_in_progress") == 2
        for s in streams:
            s.cancel()
        _wait(lambda: running.app.pool.in_flight == 0, what="the cancelled streams to let go")
        assert stub.Sample(pb.SampleRequest(model="tiny-gan", n=1, seed=3)).model == "tiny-gan@1"
    finally:
        for s in streams:
            s.cancel()
        channel.close()
        running.app.stop(0)


def test_slow_stream_reader_holds_the_server_to_a_bounded_number_of_chunks(model_store):
    running = start_server(model_store, reload_interval_s=0, metrics_port=-1)
    channel, stub = _stub(running.target)
    chunks = lambda: running.app.telemetry.registry.get_sample_value(  # noqa: E731
        "ganserve_stream_chunks_total", {"model": "tiny-gan@1"}) or 0
    try:
        # 1,000 chunks of 4096 samples (1 MiB each) would be 1 GiB if the server ran ahead of the reader.
        stream = stub.SampleStream(pb.SampleStreamRequest(model="tiny-gan", n=4096 * 1000, seed=1, chunk_size=4096))
        first = next(stream)
        assert first.start == 0
        time.sleep(1.5)
        produced = chunks()
        assert 1 <= produced <= 40, produced  # bounded by HTTP/2 flow control, not by n
        stream.cancel()
        # the cancelled stream stops producing: its handler gives its thread back (an event, not a pause that a
        # busy machine may make too short), and no chunk is counted after that
        in_progress = lambda: running.app.telemetry.registry.get_sample_value("ganserve_calls_in_progress")  # noqa: E731
        _wait(lambda: in_progress() == 0, what="the cancelled stream's handler to return")
        after = chunks()
        assert after <= produced + 2 and in_progress() == 0 and chunks() == after
    finally:
        channel.close()
        running.app.stop(0)


# -- access -----------------------------------------------------------------------------------------------

def test_token_auth(model_store):
    from sdk import AuthenticationError, Client

    running = start_server(model_store, reload_interval_s=0, metrics_port=-1, auth_token="s3cret-token")
    try:
        with Client(running.target, token="") as anonymous, pytest.raises(AuthenticationError):
            anonymous.list_models()
        with Client(running.target, token="s3cret-tokeX") as wrong, pytest.raises(AuthenticationError):
            wrong.sample(seed=1, model="tiny-gan")
        with Client(running.target, token="s3cret-token") as ok:
            assert ok.sample(2, seed=1, model="tiny-gan").shape == (2, 1, 8, 8)
        with grpc.insecure_channel(running.target) as channel:  # health stays open for probes
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:
                list(pb_grpc.GeneratorServiceStub(channel).SampleStream(pb.SampleStreamRequest(n=5)))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        running.app.stop(0)


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all made here."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def make(name, issuer_name=None, issuer_key=None, ca=False, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        return key, cert

    ca_key, ca_cert = make("test-ca", ca=True)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    srv_key, srv_cert = make("localhost", ca_cert.subject, ca_key, san=san)
    cli_key, cli_cert = make("client", ca_cert.subject, ca_key)
    out = {}
    for name, obj in (("ca", ca_cert), ("server", srv_cert), ("client", cli_cert)):
        out[f"{name}_cert"] = folder / f"{name}.pem"
        out[f"{name}_cert"].write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    for name, key in (("server", srv_key), ("client", cli_key)):
        out[f"{name}_key"] = folder / f"{name}.key"
        out[f"{name}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return out


def test_tls_and_client_certificates(model_store, tmp_path):
    from sdk import Client, UnavailableError

    c = _certificates(tmp_path)
    running = start_server(model_store, reload_interval_s=0, metrics_port=-1, address="localhost:0",
                           tls_cert=str(c["server_cert"]), tls_key=str(c["server_key"]),
                           tls_client_ca=str(c["ca_cert"]))
    target = f"localhost:{running.port}"
    try:
        with Client(target, root_certificates=c["ca_cert"], client_cert=c["client_cert"],
                    client_key=c["client_key"]) as ok:
            assert ok.sample(1, seed=1, model="tiny-gan").shape == (1, 1, 8, 8)
        with Client(target, root_certificates=c["ca_cert"], retries=0, timeout=3) as no_client_cert:
            with pytest.raises(UnavailableError):
                no_client_cert.list_models()
        with Client(target, retries=0, timeout=3) as plaintext, pytest.raises(UnavailableError):
            plaintext.list_models()
    finally:
        running.app.stop(0)


# -- process: SIGTERM drains ------------------------------------------------------------------------------

def test_sigterm_drains_in_flight_requests_then_exits_0(model_store):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server", "--address", f"127.0.0.1:{port}", "--store",
                             str(model_store), "--metrics-port", "-1", "--log-format", "json", "--drain-s", "20"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        channel, stub = _stub(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        _wait(lambda: health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
              == health_pb2.HealthCheckResponse.SERVING, 30, "SERVING")
        got = sigterm_during_slow_stream(stub, proc)
        assert got == list(range(0, 4096 * 40, 4096))
        assert proc.wait(timeout=30) == 0
        logs = [json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("{")]
        assert any("draining" in entry["msg"] for entry in logs) and logs[-1]["msg"] == "stopped"
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("halve_s, want", [(0.001, [1, 3, 2, 1]),   # 6 waiting x >= 2 ms each: half, then half
                                           (30.0, [1, 6]),          # the waiting rows would take < 30 s: all
                                           (0.0, [1, 6])])          # off: all
def test_batcher_takes_half_of_a_queue_that_would_run_long(halve_s, want):
    """halve_s: when the waiting requests would take at least halve_s to run together (rows x the measured
    seconds per row), a batch takes half of them (rounded up), so their replies and the clients' next requests
    overlap the model's run instead of waiting for all of it; every request still gets its own rows."""
    gate = _Gate()

    def run(feeds):
        out = gate(feeds)
        time.sleep(0.002 * len(out))  # a model of 2 ms per row
        return out

    b = Batcher("m", run, max_batch=64, max_queue=8, max_delay_s=0, queue_timeout_s=10, halve_s=halve_s)
    try:
        first = b.submit(_feeds(1))
        _wait(lambda: b.depth() == 0, what="the worker to take the first request")
        queued = [b.submit(_feeds(1, v)) for v in range(6)]
        gate.release.set()
        assert first.result(5)[0, 0] == 2.0 and [q.result(5)[0, 0] for q in queued] == [0, 2, 4, 6, 8, 10]
        assert gate.calls == want
    finally:
        gate.release.set()
        b.close()


def test_batcher_with_a_queue_delay_takes_all():
    """A queue delay asks for large batches: halving would only make the rest wait another delay."""
    gate = _Gate()
    b = Batcher("m", gate, max_batch=64, max_queue=8, max_delay_s=0.001, queue_timeout_s=10, halve_s=1e-9)
    try:
        b.submit(_feeds(1))
        _wait(lambda: b.depth() == 0, what="the worker to take the first request")
        queued = [b.submit(_feeds(1, v)) for v in range(4)]
        gate.release.set()
        assert [q.result(5)[0, 0] for q in queued] == [0, 2, 4, 6] and gate.calls == [1, 4]
    finally:
        gate.release.set()
        b.close()
