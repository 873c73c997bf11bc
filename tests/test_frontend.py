"""The native front end (`frontend: native`): the Go gateway (gateway/) in front of the Python server.

The contract: a call gets the same reply bytes and the same status (code, message, BadRequest details)
through either front end, whatever the batching. Tests that need the gateway executable build it with
`make gateway` when Go is there and skip, saying why, when it is not; the batch handling on the Python side
(server/gateway_backend.py) is tested without it.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
import psutil
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from protos import tensors
from protos.internal import gateway_pb2 as gw
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from server.config import Config
from server.gateway_backend import GatewayBackend
from server.service import GeneratorService
from tests.conftest import free_port, native_binaries, sigterm_during_slow_stream
from tests.test_server_workers import _serving, _start

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "build" / "ganserve-gateway"


@pytest.fixture(scope="module")
def native(model_store):
    """A native front end over the tiny store, in this process (the gateway is its child)."""
    from server.frontend import NativeFrontend

    native_binaries()
    front = NativeFrontend(Config(address="127.0.0.1:0", store=str(model_store), metrics_port=0,
                                  reload_interval_s=0, drain_s=5)).start()
    yield front
    front.stop()


def _stub(target: str) -> pb_grpc.GeneratorServiceStub:
    return pb_grpc.GeneratorServiceStub(grpc.insecure_channel(target))


def _status(err: grpc.RpcError) -> tuple:
    """(code, message, BadRequest field violations) of a failed call."""
    st = rpc_status.from_call(err)
    fields = []
    for detail in st.details if st else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [(v.field, v.description) for v in bad.field_violations]
    return err.code(), err.details(), fields


# -- the same replies and statuses ---------------------------------------------------------------------------

SAME_REPLIES = [
    ("Sample", pb.SampleRequest(model="tiny-gan", n=3, seed=11)),
    ("Sample", pb.SampleRequest(model="tiny-gan", n=2, seed=5, encoding=pb.ENCODING_PNG, return_latents=True)),
    ("Sample", pb.SampleRequest(model="tiny-gan", n=4, seed=7, truncation=0.7, encoding=pb.ENCODING_UINT8)),
    ("Sample", pb.SampleRequest(model="tiny-points", n=5, seed=1)),
    ("SampleConditional", pb.SampleConditionalRequest(model="tiny-cgan", n=4, seed=3, labels=[0, 1, 2, 3])),
    ("SampleConditional", pb.SampleConditionalRequest(model="tiny-cgan", n=2, seed=3, labels=[2])),
    ("ListModels", pb.ListModelsRequest(all_versions=True)),
    ("GetModel", pb.GetModelRequest(model="tiny-cgan")),
    ("Interpolate", pb.InterpolateRequest(model="tiny-gan", endpoints=[pb.Endpoint(seed=1), pb.Endpoint(seed=2)],
                                          steps=5)),
]


@pytest.mark.parametrize("method,request_", SAME_REPLIES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(SAME_REPLIES)])
def test_same_reply_bytes_through_either_front_end(native, server, method, request_):
    direct = getattr(_stub(server.target), method)(request_, timeout=30)
    via_gateway = getattr(_stub(f"127.0.0.1:{native.port}"), method)(request_, timeout=30)
    assert via_gateway.SerializeToString(deterministic=True) == direct.SerializeToString(deterministic=True)


BAD = [
    ("Sample", pb.SampleRequest(model="tiny-gan", n=0)),
    ("Sample", pb.SampleRequest(model="tiny-gan", n=1_000_000)),
    ("Sample", pb.SampleRequest(model="no-such-model", n=1)),
    ("Sample", pb.SampleRequest(model="tiny-cgan", n=1)),
    ("Sample", pb.SampleRequest(model="tiny-gan", n=1, truncation=float("nan"))),
    ("Sample", pb.SampleRequest(model="tiny-gan", n=1, encoding=99)),
    ("SampleConditional", pb.SampleConditionalRequest(model="tiny-cgan", n=2, labels=[9])),
    ("SampleConditional", pb.SampleConditionalRequest(model="tiny-gan", n=1, labels=[0])),
    ("Interpolate", pb.InterpolateRequest(model="tiny-gan", endpoints=[pb.Endpoint(seed=1)], steps=5)),
    ("GetModel", pb.GetModelRequest(model="tiny-gan@99")),
]


@pytest.mark.parametrize("method,request_", BAD, ids=[f"{m}-{i}" for i, (m, _) in enumerate(BAD)])
def test_same_status_through_either_front_end(native, server, method, request_):
    with pytest.raises(grpc.RpcError) as direct:
        getattr(_stub(server.target), method)(request_, timeout=30)
    with pytest.raises(grpc.RpcError) as via_gateway:
        getattr(_stub(f"127.0.0.1:{native.port}"), method)(request_, timeout=30)
    assert _status(via_gateway.value) == _status(direct.value)
    assert via_gateway.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


def test_a_request_that_is_not_a_sample_request_is_refused_with_the_field(native):
    call = grpc.insecure_channel(f"127.0.0.1:{native.port}").unary_unary(
        "/ganserve.v1.GeneratorService/Sample", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as err:
        call(b"\xff\xff\xff", timeout=10)
    code, message, fields = _status(err.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields and fields[0][0] == "request", message


def test_streams_are_relayed_chunk_by_chunk(native, server):
    request = pb.SampleStreamRequest(model="tiny-gan", n=50, seed=4, chunk_size=16, offset=3)
    direct = list(_stub(server.target).SampleStream(request, timeout=30))
    via_gateway = list(_stub(f"127.0.0.1:{native.port}").SampleStream(request, timeout=30))
    assert [c.SerializeToString(deterministic=True) for c in via_gateway] == \
        [c.SerializeToString(deterministic=True) for c in direct]
    assert len(via_gateway) == 4


def test_concurrent_calls_are_batched_and_each_gets_its_own_samples(native, server, monkeypatch):
    """64 threads at once, with each batch made to take 20 ms (the tiny model takes microseconds, so calls would
    rarely find the backend busy): the gateway gathers the waiting calls into batches (the backend's batch
    histogram shows runs of several rows), and every reply equals the Python front end's for the same seed."""
    handle = native.app.batches.backend.handle

    def slow(request):
        time.sleep(0.02)
        return handle(request)

    monkeypatch.setattr(native.app.batches.backend, "handle", slow)
    direct = _stub(server.target)
    expected = {s: direct.Sample(pb.SampleRequest(model="tiny-gan", n=1 + s % 3, seed=s), timeout=30)
                for s in range(64)}
    stub = _stub(f"127.0.0.1:{native.port}")
    before = _batch_sum(native)
    barrier = threading.Barrier(64)

    def call(seed):
        barrier.wait()
        out = []
        for _ in range(5):
            out.append(stub.Sample(pb.SampleRequest(model="tiny-gan", n=1 + seed % 3, seed=seed), timeout=30))
        return seed, out

    with ThreadPoolExecutor(64) as pool:
        for seed, replies in pool.map(call, range(64)):
            for reply in replies:
                assert reply.SerializeToString() == expected[seed].SerializeToString()
    runs, rows = (a - b for a, b in zip(_batch_sum(native), before))
    assert rows == 5 * sum(1 + s % 3 for s in range(64))
    assert runs < 5 * 64 / 2, f"{runs} generator runs for 320 calls: the calls were not batched"


def _batch_sum(front) -> tuple[float, float]:
    """(generator runs, rows) of tiny-gan so far, from the backend's Prometheus registry."""
    reg = front.app.telemetry.registry
    ref = next(m.ref for m in front.app.registry.models() if m.name == "tiny-gan")
    return (reg.get_sample_value("ganserve_batch_samples_count", {"model": ref}) or 0.0,
            reg.get_sample_value("ganserve_batch_samples_sum", {"model": ref}) or 0.0)


def test_batched_calls_are_counted_as_the_calls_they_are(native):
    reg = native.app.telemetry.registry
    labels = {"method": "Sample", "model": "-", "code": "NOT_FOUND"}
    before = reg.get_sample_value("ganserve_requests_total", labels) or 0.0
    with pytest.raises(grpc.RpcError):
        _stub(f"127.0.0.1:{native.port}").Sample(pb.SampleRequest(model="nope", n=1), timeout=10)
    assert reg.get_sample_value("ganserve_requests_total", labels) == before + 1


def test_the_gateway_counts_what_only_it_sees(native):
    """The gateway's own /metrics: calls it answered (by method and code, the Python server's spelling), their
    time with the queue wait, batch sizes, queue depth."""
    import urllib.request

    def scrape() -> str:
        return urllib.request.urlopen(native.metrics_url, timeout=10).read().decode()

    def values() -> dict:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(scrape()) for s in family.samples}

    before = values()  # the server is shared with other tests: compare counts before and after these two calls
    stub = _stub(f"127.0.0.1:{native.port}")
    stub.Sample(pb.SampleRequest(model="tiny-gan", n=1, seed=1), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.GetModel(pb.GetModelRequest(model="nope"), timeout=10)
    after = values()
    key = lambda name, labels: (name, tuple(sorted(labels.items())))  # noqa: E731
    value = lambda name, **labels: after.get(key(name, labels), 0)  # noqa: E731
    added = lambda name, **labels: value(name, **labels) - before.get(key(name, labels), 0)  # noqa: E731
    assert native.metrics_url.endswith("/metrics") and value("ganserve_gateway_queue_depth") == 0
    assert added("ganserve_gateway_calls_total", method="Sample", code="OK") == 1
    assert added("ganserve_gateway_calls_total", method="GetModel", code="NOT_FOUND") == 1
    assert added("ganserve_gateway_call_seconds_count", method="Sample") == 1
    assert added("ganserve_gateway_batch_calls_count") == 1 and value("ganserve_gateway_backend_failures_total") == 0


def test_a_passed_deadline_is_answered_deadline_exceeded_and_the_server_goes_on(native):
    stub = _stub(f"127.0.0.1:{native.port}")
    with pytest.raises(grpc.RpcError) as err:
        # 1,024 PNGs take tens of ms to encode: the reply cannot beat the deadline (1,024 float samples of the
        # tiny model could, on a warm machine: the test then saw no error)
        stub.Sample(pb.SampleRequest(model="tiny-gan", n=1024, seed=1, encoding=pb.ENCODING_PNG), timeout=0.0005)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub.Sample(pb.SampleRequest(model="tiny-gan", n=1, seed=1), timeout=10).model


def test_health_is_relayed(native):
    ch = grpc.insecure_channel(f"127.0.0.1:{native.port}")
    reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="ganserve.v1.GeneratorService"),
                                                 timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_on_huge_unknown_names_keeps_nothing_behind_the_gateway(native):
    """The relayed Check and Watch on 100 distinct 1 MiB names end NOT_FOUND; neither the
    backend's health table nor the gateway's memory keeps them."""
    gateway = psutil.Process(native.proc.pid)
    with grpc.insecure_channel(f"127.0.0.1:{native.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)

        def ask(i: int):
            name = f"{i:04d}" + "x" * (1 << 20)
            for call in (health.Check, lambda r, timeout: next(health.Watch(r, timeout=timeout))):
                with pytest.raises(grpc.RpcError) as err:
                    call(health_pb2.HealthCheckRequest(service=name), timeout=20)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()

        for i in range(5):
            ask(i)
        before = gateway.memory_info().rss
        for i in range(5, 105):
            ask(i)
        grown = (gateway.memory_info().rss - before) / (1 << 20)
    assert set(native.app.health._status) == {"", "ganserve.v1.GeneratorService", "inference.GRPCInferenceService"}
    assert all(len(name) < 64 for name in native.app.health._watchers)
    assert grown < 40, f"the gateway grew {grown:.0f} MB"  # (Go frees lazily: a loose bound, 200 MB went through)


def test_requests_over_their_limits_get_the_same_status_through_either_front_end(native, server):
    """A request over max_request_bytes is refused by the gateway before it is batched or
    relayed, with the Python server's status; a relayed one with too many elements, by the backend."""
    endpoints = b"\x12\x00" * ((4 << 20) - 64)  # 4M empty endpoints, just under 8 MiB
    latents = pb.Tensor(shape=[1, 8], data=bytes(9 << 20))
    cases = [("Sample", pb.SampleRequest(model="tiny-gan", latents=latents).SerializeToString()),
             ("Interpolate", pb.InterpolateRequest(model="tiny-gan").SerializeToString() + endpoints),
             ("Interpolate", pb.InterpolateRequest(model="tiny-gan", endpoints=[pb.Endpoint(latent=latents)] * 2)
              .SerializeToString())]
    seen = []
    for method, data in cases:
        statuses = []
        for target in (f"127.0.0.1:{native.port}", server.target):
            with grpc.insecure_channel(target) as ch, pytest.raises(grpc.RpcError) as err:
                ch.unary_unary(f"/ganserve.v1.GeneratorService/{method}")(data, timeout=30)
            statuses.append((err.value.code(), err.value.details()))
        assert statuses[0] == statuses[1], method
        seen.append(statuses[0])
    assert seen[0][0] == seen[2][0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert seen[0][1].endswith("over the server's limit of 8388608 bytes (max_request_bytes)")
    assert seen[1] == (grpc.StatusCode.INVALID_ARGUMENT,
                       "endpoints: at most 16 elements (the server's limit), got at least 17")


def test_two_thousand_idle_connections_leave_the_gateway_answering(native):
    """The connection limit through the gateway (it raises its own open-file limit, Go does at start)."""
    from tests.test_server_hardening import answers_within_deadlines, idle_connections

    conns = idle_connections(f"127.0.0.1:{native.port}", 2000)
    try:
        time.sleep(0.5)
        assert psutil.Process(native.proc.pid).num_fds() > 2000
        answers_within_deadlines(f"127.0.0.1:{native.port}")
    finally:
        for s in conns:
            s.close()


# -- access, overload, process ------------------------------------------------------------------------------

def test_bearer_token_is_required_on_batched_and_relayed_calls(model_store):
    from server.frontend import NativeFrontend

    native_binaries()
    front = NativeFrontend(Config(address="127.0.0.1:0", store=str(model_store), metrics_port=-1,
                                  reload_interval_s=0, auth_token="s3cret")).start()
    try:
        stub = _stub(f"127.0.0.1:{front.port}")
        good = (("authorization", "Bearer s3cret"),)
        for call, request in ((stub.Sample, pb.SampleRequest(model="tiny-gan", n=1)),
                              (stub.ListModels, pb.ListModelsRequest())):
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.RpcError) as err:
                    call(request, metadata=metadata, timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            call(request, metadata=good, timeout=10)
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{front.port}"))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        assert oct(os.stat(front.dir).st_mode & 0o777) == "0o700"
    finally:
        front.stop()
    assert not Path(front.dir).exists()


def test_the_gateway_checks_the_token_before_it_reads_a_request(model_store):
    """Without the token, a 60 MB EvaluateDivergence upload (under its limit) or Sample costs the
    gateway its headers, not its body (it read whole bodies first: +700 MB)."""
    from server.frontend import NativeFrontend

    native_binaries()
    front = NativeFrontend(Config(address="127.0.0.1:0", store=str(model_store), metrics_port=-1,
                                  reload_interval_s=0, auth_token="s3cret")).start()
    try:
        gateway = psutil.Process(front.proc.pid)
        body = pb.EvaluateDivergenceRequest(p=pb.DataSource(samples=pb.Tensor(data=bytes(60 << 20)))).SerializeToString()
        before, peak = gateway.memory_info().rss, 0
        with grpc.insecure_channel(f"127.0.0.1:{front.port}") as ch:
            for method in ("EvaluateDivergence", "Sample") * 4:
                with pytest.raises(grpc.RpcError) as err:
                    ch.unary_unary(f"/ganserve.v1.GeneratorService/{method}")(body, timeout=30)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                peak = max(peak, gateway.memory_info().rss)
        assert (peak - before) / (1 << 20) < 30, f"the gateway grew {(peak - before) / (1 << 20):.0f} MB"
    finally:
        front.stop()


def test_tls_and_client_certificates_at_the_gateway(model_store, tmp_path):
    from sdk import Client, UnavailableError
    from server.frontend import NativeFrontend
    from tests.test_server_reliability import _certificates

    native_binaries()
    c = _certificates(tmp_path)
    front = NativeFrontend(Config(address="localhost:0", store=str(model_store), metrics_port=-1, reload_interval_s=0,
                                  tls_cert=str(c["server_cert"]), tls_key=str(c["server_key"]),
                                  tls_client_ca=str(c["ca_cert"]))).start()
    target = f"localhost:{front.port}"
    try:
        with Client(target, root_certificates=c["ca_cert"], client_cert=c["client_cert"],
                    client_key=c["client_key"]) as ok:
            assert ok.sample(1, seed=1, model="tiny-gan").shape == (1, 1, 8, 8)  # batched
            assert len(ok.list_models()) == 4  # relayed
        with Client(target, root_certificates=c["ca_cert"], retries=0, timeout=3) as no_client_cert:
            with pytest.raises(UnavailableError):
                no_client_cert.sample(1, seed=1, model="tiny-gan")
        with Client(target, retries=0, timeout=3) as plaintext, pytest.raises(UnavailableError):
            plaintext.list_models()
    finally:
        front.stop()


def test_a_full_queue_is_refused_resource_exhausted_at_once(model_store):
    """max_concurrent_rpcs bounds the gateway's queue: a flood gets RESOURCE_EXHAUSTED with the reason, the
    rest are answered."""
    from server.frontend import NativeFrontend

    native_binaries()
    front = NativeFrontend(Config(address="127.0.0.1:0", store=str(model_store), metrics_port=-1, reload_interval_s=0,
                                  max_concurrent_rpcs=2, gateway_inflight=1, gateway_max_batch=1)).start()
    try:
        stub = _stub(f"127.0.0.1:{front.port}")

        def call(i):
            try:
                stub.Sample(pb.SampleRequest(model="tiny-gan", n=1024, seed=i), timeout=60)
                return "ok"
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry" in e.details(), e
                return "refused"

        with ThreadPoolExecutor(32) as pool:
            outcomes = list(pool.map(call, range(64)))
        assert outcomes.count("refused") > 0 and outcomes.count("ok") > 0
    finally:
        front.stop()


def test_a_reply_over_max_message_bytes_is_resource_exhausted_as_without_the_gateway(model_store):
    from server.frontend import NativeFrontend
    from tests.conftest import start_server

    native_binaries()
    small = dict(metrics_port=-1, reload_interval_s=0, max_message_bytes=4096)
    direct = start_server(model_store, **small)
    front = NativeFrontend(Config(address="127.0.0.1:0", store=str(model_store), **small)).start()
    try:
        for target in (f"127.0.0.1:{front.port}", direct.target):
            stub = _stub(target)
            with pytest.raises(grpc.RpcError) as err:  # 64 x 8 x 8 float32 = 16 KiB
                stub.Sample(pb.SampleRequest(model="tiny-gan", n=64, seed=1), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (target, err.value)
            assert stub.Sample(pb.SampleRequest(model="tiny-gan", n=2, seed=1), timeout=10).model
    finally:
        front.stop()
        direct.app.stop(0)


def test_a_call_that_waited_past_the_queue_timeout_is_refused(model_store, monkeypatch):
    """As the Python batcher does with `queue_timeout_ms`: with one slow batch at a time (made to take 0.3 s),
    calls that waited more than 100 ms in the gateway's queue get RESOURCE_EXHAUSTED saying so."""
    from server.frontend import NativeFrontend

    native_binaries()
    front = NativeFrontend(Config(address="127.0.0.1:0", store=str(model_store), metrics_port=-1, reload_interval_s=0,
                                  queue_timeout_ms=100, gateway_inflight=1, gateway_max_batch=1)).start()
    handle = front.app.batches.backend.handle

    def slow(request):
        time.sleep(0.3)
        return handle(request)

    monkeypatch.setattr(front.app.batches.backend, "handle", slow)
    try:
        stub = _stub(f"127.0.0.1:{front.port}")

        def call(i):
            try:
                return stub.Sample(pb.SampleRequest(model="tiny-gan", n=1, seed=i), timeout=30).model
            except grpc.RpcError as e:
                return e.code(), e.details()

        with ThreadPoolExecutor(3) as pool:
            outcomes = list(pool.map(call, range(3)))
        refused = [o for o in outcomes if isinstance(o, tuple)]
        assert 1 <= len(refused) <= 2 and len(outcomes) - len(refused) >= 1, outcomes
        assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue timeout of 100 ms" in text
                   for code, text in refused), refused
    finally:
        front.stop()


def _start_cli(store: Path, port: int, *extra: str) -> subprocess.Popen:
    return _start(store, port, "--frontend", "native", *extra)


def test_cli_restarts_a_dead_gateway_and_sigterm_drains_a_stream(model_store):
    import psutil

    native_binaries()
    port = free_port()
    proc = _start_cli(model_store, port)
    try:
        target = f"127.0.0.1:{port}"
        _serving(target)
        gateway = [p for p in psutil.Process(proc.pid).children() if "ganserve-gateway" in " ".join(p.cmdline())]
        assert len(gateway) == 1
        gateway[0].kill()
        time.sleep(1.5)  # the supervisor polls every 0.5 s
        _serving(target)
        stub = _stub(target)
        assert stub.Sample(pb.SampleRequest(model="tiny-gan", n=1, seed=1), timeout=10).model
        # a stream in flight through the gateway is drained to its end after SIGTERM, then the process exits 0
        got = sigterm_during_slow_stream(stub, proc)
        assert got == list(range(0, 4096 * 40, 4096))
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log = proc.stdout.read()
    assert "exited with" in log and "native front end: gateway" in log, log


def test_the_gateway_does_not_outlive_a_killed_server(model_store):
    import psutil

    native_binaries()
    port = free_port()
    proc = _start_cli(model_store, port)
    try:
        _serving(f"127.0.0.1:{port}")
        gateway = [p for p in psutil.Process(proc.pid).children() if "ganserve-gateway" in " ".join(p.cmdline())][0]
        proc.kill()  # SIGKILL: no chance to stop the gateway
        proc.wait(10)
        gateway.wait(15)  # psutil.TimeoutExpired if it stays
        with socket.socket() as s:  # and the port is free again
            s.bind(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_busy_metrics_port_costs_the_gateway_its_metrics_not_its_service(model_store):
    from server.frontend import NativeFrontend

    native_binaries()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        front = NativeFrontend(Config(address="127.0.0.1:0", store=str(model_store), reload_interval_s=0,
                                      metrics_port=busy.getsockname()[1] - 1)).start()  # gateway: metrics_port + 1
        try:
            assert front.metrics_url == ""
            assert _stub(f"127.0.0.1:{front.port}").Sample(pb.SampleRequest(model="tiny-gan", n=1), timeout=10).model
        finally:
            front.stop()


def test_cli_without_the_gateway_executable_says_how_to_build_it(model_store, tmp_path):
    proc = _start_cli(model_store, free_port(), "--gateway-binary", str(tmp_path / "missing"))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "not an executable file" in out, out
    assert "Traceback" not in out


def test_cli_with_a_busy_address_exits_1_with_the_reason(model_store):
    native_binaries()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = _start_cli(model_store, busy.getsockname()[1])
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "address already in use" in out and "did not start" in out, out


def test_config_refuses_workers_with_the_native_front_end():
    with pytest.raises(ValueError, match="workers 1"):
        Config(frontend="native", workers=2)
    with pytest.raises(ValueError, match="frontend"):
        Config(frontend="rust")
    with pytest.raises(ValueError, match="gateway_inflight"):
        Config(gateway_inflight=0)


# -- the Python side alone (no Go needed) -------------------------------------------------------------------

@pytest.fixture(scope="module")
def backend(server) -> GatewayBackend:
    app = server.app
    return GatewayBackend(GeneratorService(app.registry, app.config, app.telemetry))


def _item(method: str, request, timeout_us: int = 0) -> gw.BatchItem:
    return gw.BatchItem(method=method, request=request.SerializeToString(), timeout_us=timeout_us)


def test_a_mixed_batch_answers_each_item_as_its_own_call_would(backend, server):
    """Two models, both methods, good and bad items in one batch: each result is the reply (or the status) the
    Python front end gives for that call alone."""
    calls = [("Sample", pb.SampleRequest(model="tiny-gan", n=2, seed=1)),
             ("SampleConditional", pb.SampleConditionalRequest(model="tiny-cgan", n=3, seed=2, labels=[1])),
             ("Sample", pb.SampleRequest(model="tiny-gan", n=0)),
             ("Sample", pb.SampleRequest(model="tiny-gan", n=1, seed=3, encoding=pb.ENCODING_PNG)),
             ("SampleConditional", pb.SampleConditionalRequest(model="tiny-cgan", n=1, labels=[7])),
             ("Sample", pb.SampleRequest(model="tiny-points", n=4, seed=4))]
    reply = backend.handle(gw.SampleBatchRequest(items=[_item(m, r) for m, r in calls]))
    assert len(reply.results) == len(calls)
    stub = _stub(server.target)
    for (method, request), result in zip(calls, reply.results):
        try:
            expected = getattr(stub, method)(request, timeout=30)
        except grpc.RpcError as e:
            st = status_pb2.Status.FromString(result.status)
            assert not result.response and st.code == e.code().value[0] and st.message == e.details()
        else:
            assert not result.status and result.response == expected.SerializeToString()


def test_a_batch_item_past_its_deadline_or_of_an_unknown_method_fails_alone(backend):
    ok = _item("Sample", pb.SampleRequest(model="tiny-gan", n=1, seed=1))
    late = _item("Sample", pb.SampleRequest(model="tiny-gan", n=1, seed=1), timeout_us=1)
    other = gw.BatchItem(method="Invert", request=b"")
    time.sleep(0.001)
    results = backend.handle(gw.SampleBatchRequest(items=[ok, late, other])).results
    assert results[0].response and not results[0].status
    codes = [status_pb2.Status.FromString(r.status).code for r in results[1:]]
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED.value[0], grpc.StatusCode.INVALID_ARGUMENT.value[0]]


def test_the_batch_socket_speaks_length_prefixed_messages_and_drops_garbage(tmp_path, backend):
    from server.gateway_backend import BatchSocket

    path = str(tmp_path / "batch.sock")
    listener = BatchSocket(path, backend)
    try:
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            body = gw.SampleBatchRequest(items=[_item("Sample", pb.SampleRequest(model="tiny-gan", n=2, seed=9))] * 2)
            raw = body.SerializeToString()
            for _ in range(2):  # one connection carries one batch after another
                s.sendall(struct.pack(">I", len(raw)) + raw)
                size, = struct.unpack(">I", _read(s, 4))
                reply = gw.SampleBatchResponse.FromString(_read(s, size))
                x = [tensors.to_array(pb.SampleResponse.FromString(r.response).samples) for r in reply.results]
                assert len(x) == 2 and np.array_equal(x[0], x[1]) and x[0].shape == (2, 1, 8, 8)
        with socket.socket(socket.AF_UNIX) as s:  # not a SampleBatchRequest: the connection is closed
            s.connect(path)
            s.sendall(struct.pack(">I", 3) + b"\xff\xff\xff")
            s.settimeout(10)
            assert s.recv(1) == b""
        with socket.socket(socket.AF_UNIX) as s:  # and the listener goes on
            s.connect(path)
            s.sendall(struct.pack(">I", len(raw)) + raw)
            assert struct.unpack(">I", _read(s, 4))[0] > 0
    finally:
        listener.close()


def _read(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, "connection closed early"
        out += chunk
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another user needs root to switch users")
def test_the_batch_socket_refuses_another_user(tmp_path, backend):
    """SO_PEERCRED behind the folder's 0700: with the folder and socket opened to all, a process
    of another uid still gets the connection closed before any batch."""
    from server.gateway_backend import BatchSocket

    os.chmod(tmp_path, 0o777)
    path = str(tmp_path / "batch.sock")
    listener = BatchSocket(path, backend)
    os.chmod(path, 0o666)
    raw = gw.SampleBatchRequest(items=[_item("Sample", pb.SampleRequest(model="tiny-gan", n=1))]).SerializeToString()
    try:
        pid = os.fork()
        if pid == 0:  # the child: nobody (65534) asks for a batch
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(path)
                    s.settimeout(5)
                    s.sendall(struct.pack(">I", len(raw)) + raw)
                    code = 0 if s.recv(4) == b"" else 2  # closed, no reply
            except OSError:
                code = 0  # (reset: refused as well)
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
        with socket.socket(socket.AF_UNIX) as s:  # this user still gets its batches
            s.connect(path)
            s.sendall(struct.pack(">I", len(raw)) + raw)
            size, = struct.unpack(">I", _read(s, 4))
            assert len(gw.SampleBatchResponse.FromString(_read(s, size)).results) == 1
    finally:
        listener.close()


def test_the_gateway_gets_its_token_on_stdin_never_in_a_file_or_argument(model_store):
    """A killed server leaves no token file behind because there never is one."""
    from server.frontend import NativeFrontend

    native_binaries()
    front = NativeFrontend(Config(address="127.0.0.1:0", store=str(model_store), metrics_port=-1,
                                  reload_interval_s=0, auth_token="t0ken-in-memory")).start()
    try:
        assert "t0ken-in-memory" not in " ".join(psutil.Process(front.proc.pid).cmdline())
        for path in Path(front.dir).rglob("*"):
            assert not path.is_file() or b"t0ken-in-memory" not in path.read_bytes(), path
        stub = _stub(f"127.0.0.1:{front.port}")
        assert stub.Sample(pb.SampleRequest(model="tiny-gan", n=1), metadata=(("authorization", "Bearer t0ken-in-memory"),),
                           timeout=10).model
    finally:
        front.stop()
