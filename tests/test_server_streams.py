"""Streams nobody reads cannot take the server (server/streams.py), streams have a lifetime, and the SIGTERM drain
answers NOT_SERVING to a new connection until the port closes. Real servers on port 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from tests.conftest import ROOT, free_port, start_server

STREAMS, CHANNELS = 200, 4


def _until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_hundred_unread_streams_leave_other_calls_served(model_store):
    """200 SampleStream calls never read held all 128 admission slots: every other call was refused while health
    said SERVING. Now streams hold at most half the slots (the rest are refused RESOURCE_EXHAUSTED at once),
    other calls are served, and a stream whose send stays blocked is cancelled after stream_send_timeout_s."""
    running = start_server(model_store, reload_interval_s=0, metrics_port=-1, stream_send_timeout_s=3.0)
    channels = [grpc.insecure_channel(running.target) for _ in range(CHANNELS)]
    try:
        app = running.app
        stubs = [pb_grpc.GeneratorServiceStub(c) for c in channels]
        request = pb.SampleStreamRequest(model="tiny-gan", n=10**6, seed=1, chunk_size=4096)  # 1 MiB chunks
        streams = [stubs[i % CHANNELS].SampleStream(request, timeout=120) for i in range(STREAMS)]
        limit = app.streams.max_streams
        assert limit == app.config.max_concurrent_rpcs // 2 == 64
        _until(lambda: sum(s.done() for s in streams) >= STREAMS - limit, 30, "the excess streams' refusals")
        refused = [s for s in streams if s.done()]
        assert {s.code() for s in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "streams in progress" in refused[0].details()
        assert app.streams.active == limit
        time.sleep(0.5)  # the admitted ones are blocked on flow control now
        health = health_pb2_grpc.HealthStub(channels[0])
        for i in range(20):  # other calls are served meanwhile
            reply = stubs[i % CHANNELS].Sample(pb.SampleRequest(model="tiny-gan", n=2, seed=i), timeout=10)
            assert reply.model == "tiny-gan@1"
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        # blocked for stream_send_timeout_s: cancelled, their slots and threads back
        _until(lambda: app.streams.active == 0 and app.pool.in_flight == 0, 20, "the slots to be released")
        for s in streams[:limit + 10]:  # a client that reads again gets what was buffered, then CANCELLED
            if s not in refused:
                with pytest.raises(grpc.RpcError) as err:
                    for _ in s:
                        pass
                assert err.value.code() == grpc.StatusCode.CANCELLED
        ended = app.telemetry.registry.get_sample_value("ganserve_streams_ended_total", {"reason": "send_blocked"})
        assert ended == limit
        chunks = list(stubs[0].SampleStream(pb.SampleStreamRequest(model="tiny-gan", n=600, seed=2, chunk_size=256),
                                            timeout=30))
        assert [c.start for c in chunks] == [0, 256, 512]
    finally:
        for c in channels:
            c.close()
        running.app.stop(0)


def test_a_stream_ends_after_max_stream_s(model_store):
    running = start_server(model_store, reload_interval_s=0, metrics_port=-1, max_stream_s=1.0)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stream = pb_grpc.GeneratorServiceStub(channel).SampleStream(
                pb.SampleStreamRequest(model="tiny-gan", n=10**7, seed=1, chunk_size=4096), timeout=60)
            t0, got = time.monotonic(), 0
            with pytest.raises(grpc.RpcError) as err:
                for _ in stream:
                    got += 1
                    time.sleep(0.02)  # a slow but steady reader (what HTTP/2 buffered is read after the end)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert 0.9 < time.monotonic() - t0 < 10 and 5 < got < 10**7 // 4096
    finally:
        running.app.stop(0)


def _check(target: str) -> str:
    """Health/Check over a new connection: the status name, or the RPC error's code name."""
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as e:
            return e.code().name


def test_sigterm_answers_not_serving_on_new_connections_until_the_port_closes(model_store):
    """During the drain a health check on a new connection got UNAVAILABLE (the port closed at once). Now, for
    shutdown_notice_s after SIGTERM, a new connection's Check says NOT_SERVING and calls are still served; then
    the port closes (UNAVAILABLE) and the process exits 0."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "server", "--address", target, "--store", str(model_store),
                             "--metrics-port", "-1", "--reload-interval-s", "0", "--shutdown-notice-s", "3"],
                            cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        _until(lambda: _check(target) == "SERVING", 60, "SERVING")
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        _until(lambda: _check(target) == "NOT_SERVING", 2, "NOT_SERVING")
        with grpc.insecure_channel(target) as channel:  # a new connection's call is still served
            stub = pb_grpc.GeneratorServiceStub(channel)
            assert stub.Sample(pb.SampleRequest(model="tiny-gan", n=1, seed=1), timeout=5).model == "tiny-gan@1"
        seen = []
        while time.monotonic() - t0 < 10 and (not seen or seen[-1] != "UNAVAILABLE"):
            seen.append(_check(target))
            time.sleep(0.1)
        assert seen[-1] == "UNAVAILABLE" and set(seen) == {"NOT_SERVING", "UNAVAILABLE"}, seen
        assert 2.5 < time.monotonic() - t0  # NOT_SERVING for the notice, then closed
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_cancelled_stream_gives_its_slot_back_at_once(model_store):
    """The soak found streams that ended (the client cancelled, or its deadline passed) holding their slot until
    Python's cyclic garbage collector ran: enough of them refused new streams. The slot is freed when the RPC
    ends."""
    import gc

    running = start_server(model_store, reload_interval_s=0, metrics_port=-1)
    gc.disable()  # what a long pause between collections looks like
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.GeneratorServiceStub(channel)
            request = pb.SampleStreamRequest(model="tiny-gan", n=10**6, seed=1, chunk_size=4096)
            streams = [stub.SampleStream(request, timeout=30) for _ in range(3)]  # unread, then given up
            streams += [stub.SampleStream(request, timeout=1.0) for _ in range(3)]  # unread past their deadline
            _until(lambda: running.app.streams.active == 6, 10, "six streams")
            time.sleep(1.5)
            for s in streams[:3]:
                s.cancel()
            _until(lambda: running.app.streams.active == 0, 5, "the ended streams' slots")
    finally:
        gc.enable()
        running.app.stop(0)
