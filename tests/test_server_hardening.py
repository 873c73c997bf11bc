"""Security hardening against real servers: nothing a client sends, with or without a token, can
grow the server for good or take it down. Servers run as `python -m server` subprocesses so their RSS is
theirs alone (psutil); the native front end's cases are in tests/test_frontend.py."""

from __future__ import annotations

import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import onnx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from server.limits import TRIM_THRESHOLD_BYTES
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
    # started under the soft open-file limit most Linux sessions have, 1,024 (the server raises its own)
    proc = subprocess.Popen(["sh", "-c", 'ulimit -Sn 1024 && exec "$0" "$@"', sys.executable, "-m", "server",
                             "--address", f"127.0.0.1:{port}", "--store", str(model_store), "--metrics-port", "-1",
                             "--reload-interval-s", "0", "--log-level", "WARNING"],
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


# -- F2: requests are measured before they are decoded --------------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field, on the wire."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_PACKED_ONES = b"\x01" * (8 * MB - 64)
# (method, serialized request, code, field): each under the message limit, each decoding to 100s of MB
AMPLIFIERS = [
    ("SampleConditional", _field(1, b"tiny-cgan") + _field(8, _PACKED_ONES), "INVALID_ARGUMENT", "labels"),
    ("Interpolate", _field(1, b"tiny-gan") + b"\x12\x00" * (4 * MB - 64), "INVALID_ARGUMENT", "endpoints"),
    ("Interpolate", b"\x0b\x10\x01\x0c" + b"\x12\x00" * (4 * MB - 64), "INVALID_ARGUMENT", "endpoints"),  # after a group
    ("Sample", _field(1, b"tiny-gan") + _field(4, _field(1, _PACKED_ONES)), "INVALID_ARGUMENT", "latents.shape"),
    ("EvaluateDivergence", b"\x1a\x00" * (30 * MB), "INVALID_ARGUMENT", "metrics"),
    ("Invert", _field(1, b"tiny-gan") + _field(3, _PACKED_ONES), "INVALID_ARGUMENT", "labels"),
    ("Sample", _field(1, b"tiny-gan") + _field(4, _field(3, bytes(60 * MB))), "RESOURCE_EXHAUSTED", None),
]


def _raw(channel: grpc.Channel, method: str):
    return channel.unary_unary(f"/ganserve.v1.GeneratorService/{method}")  # bytes in, bytes out


# What glibc may keep after a call without giving it back: up to the trim threshold free at the top of each heap
# (server/limits.py fixes it at 8 MiB), here the handler thread's and gRPC's receiving thread's. A decoded
# amplifying request would leave hundreds of MB.
RETAINED_MB = 2 * TRIM_THRESHOLD_BYTES / MB


class _PeakRss:
    """The highest RSS of `proc` while the block runs (sampled every 5 ms), in MB."""

    def __init__(self, proc):
        self.proc, self.peak, self._stop = psutil.Process(proc.pid), 0.0, threading.Event()

    def __enter__(self):
        self.base = self.proc.memory_info().rss / MB
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss / MB)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.end = self.proc.memory_info().rss / MB


@pytest.mark.parametrize("method,data,code,field", AMPLIFIERS, ids=[f"{a[0]}-{a[3]}" for a in AMPLIFIERS])
def test_an_amplifying_request_is_refused_before_it_costs_memory(served, method, data, code, field):
    address, proc = served
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) as ch:
        call = _raw(ch, method)
        with _PeakRss(proc) as rss, pytest.raises(grpc.RpcError) as err:
            call(data, timeout=30, compression=grpc.Compression.Gzip)  # a few 10s of KB on the wire
        assert err.value.code().name == code, err.value.details()
        if field:
            assert err.value.details().startswith(f"{field}: at most "), err.value.details()
            assert rpc_status.from_call(err.value).details  # the BadRequest field violation travels too
        print(f"{method} {field}: RSS {rss.base:.0f} -> peak {rss.peak:.0f} -> {rss.end:.0f} MB")
        assert rss.peak - rss.base < 3.5 * len(data) / MB + 20  # gRPC core and Python copies; nothing decoded
        assert rss.end - rss.base < 10 + RETAINED_MB


def test_eight_amplifying_requests_at_once_leave_health_answering(served):
    """The review's worst case: 8 at once took the server to 8.2 GB and health timed out for 10 s."""
    address, proc = served
    method, data = AMPLIFIERS[0][:2]
    with grpc.insecure_channel(address) as ch, grpc.insecure_channel(address) as probe, ThreadPoolExecutor(8) as pool, \
            _PeakRss(proc) as rss:
        call = _raw(ch, method)

        def one(_):
            try:
                call(data, timeout=30, compression=grpc.Compression.Gzip)
            except grpc.RpcError as e:
                return e.code()

        codes = pool.map(one, range(8))
        health = health_pb2_grpc.HealthStub(probe)  # (a probe has its own connection)
        for _ in range(5):
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                health_pb2.HealthCheckResponse.SERVING
        assert list(codes) == [grpc.StatusCode.INVALID_ARGUMENT] * 8
    print(f"8 at once: RSS {rss.base:.0f} -> peak {rss.peak:.0f} -> {rss.end:.0f} MB")
    assert rss.peak - rss.base < 8 * 3.5 * len(data) / MB + 50
    assert rss.end - rss.base < 10 + RETAINED_MB


# -- F7: a graph reads no file the manifest does not vouch for -------------------------------------------------

def _external_gan(store: Path, tmp: Path, name: str, location: str, *, list_it: bool) -> None:
    """tiny-gan's generator with its weights in an external file named `location` (listed in the manifest, or
    not); the file itself is written next to the graph as weights.bin."""
    from onnx.external_data_helper import convert_model_to_external_data

    from ganserve.store import manifest as mf
    from tests.conftest import IMG, LATENT, _spec, _weights, build_generator, manifest

    tmp.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(build_generator(tmp / f"{name}.onnx", False, _weights(0))))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=1024)
    onnx.save(model, str(tmp / f"{name}.onnx"))  # writes tmp/weights.bin
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    (tmp / f"{name}.onnx").write_bytes(model.SerializeToString())
    graphs = {"generator": {"file": "generator.onnx", "inputs": [_spec("z", [LATENT])], "outputs": [_spec("x", IMG)]}}
    files = {"generator.onnx": tmp / f"{name}.onnx"}
    if list_it:
        files[location] = tmp / "weights.bin"
    folder = mf.publish(store, manifest(name, "gan", graphs=graphs), files)
    if not list_it and "/" not in location:
        shutil.copy(tmp / "weights.bin", folder / location)  # beside the graph, but not in the manifest


def test_a_graph_with_external_data_outside_the_manifest_is_refused_at_load_with_the_reason(tmp_path):
    from tests.conftest import start_server

    store = tmp_path / "store"
    _external_gan(store, tmp_path / "a", "escapes", "../../../../../../../../etc/passwd", list_it=False)
    _external_gan(store, tmp_path / "b", "unlisted", "weights.bin", list_it=False)
    _external_gan(store, tmp_path / "c", "listed", "weights.bin", list_it=True)
    running = start_server(store, reload_interval_s=0, metrics_port=-1)
    try:
        with grpc.insecure_channel(running.target) as ch:
            stub = pb_grpc.GeneratorServiceStub(ch)
            served = {m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
            assert served == {"listed"}  # external data listed with its sha256: served
            assert stub.Sample(pb.SampleRequest(model="listed", n=2, seed=1), timeout=10).model == "listed@1"
            for name, location in (("escapes", "../../../../../../../../etc/passwd"), ("unlisted", "weights.bin")):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Sample(pb.SampleRequest(model=name, n=1), timeout=10)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                assert f"external data {location!r} is not a file listed (with its sha256) in the manifest" in \
                    err.value.details(), err.value.details()
    finally:
        running.app.stop(0)


# -- F10: names match whole, a trailing newline included -------------------------------------------------------

def test_a_name_with_a_trailing_newline_is_neither_served_nor_accepted(model_store, tmp_path):
    from ganserve.store import manifest as mf
    from tests.conftest import start_server

    store = tmp_path / "store"
    shutil.copytree(model_store, store)
    shutil.copytree(store / "tiny-gan", store / "tiny-gan\n")  # a folder whose name "^...$" let through
    with pytest.raises(mf.ManifestError):
        mf.validate({**mf.read_manifest(store / "tiny-gan" / "1"), "name": "tiny-gan\n"})
    running = start_server(store, reload_interval_s=0, metrics_port=-1)
    try:
        with grpc.insecure_channel(running.target) as ch:
            stub = pb_grpc.GeneratorServiceStub(ch)
            names = [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models]
            assert "tiny-gan" in names and not any("\n" in n for n in names)
            for ref in ("tiny-gan\n", "tiny-gan\n@1"):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Sample(pb.SampleRequest(model=ref, n=1), timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert err.value.details().startswith("model: model name must match")
    finally:
        running.app.stop(0)


# -- F3: connections ------------------------------------------------------------------------------------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def idle_connections(address: str, count: int) -> list[socket.socket]:
    """`count` HTTP/2 connections that send their preface and nothing else (this process's own open-file limit
    raised to hold them)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 512:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 512), hard))
    host, port = address.rsplit(":", 1)
    out = []
    for _ in range(count):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(H2_PREFACE)
        out.append(s)
    return out


def answers_within_deadlines(address: str) -> None:
    """Health (2 s) and Sample (5 s) on a new connection."""
    with grpc.insecure_channel(address) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert pb_grpc.GeneratorServiceStub(ch).Sample(pb.SampleRequest(model="tiny-gan", n=2, seed=1), timeout=5).model


def test_two_thousand_idle_connections_leave_health_and_sample_answering(served):
    """The server started under a soft open-file limit of 1,024 (the review: 1,100 idle connections there made
    health and Sample time out, "File descriptor limit reached"); it raises its own limit at start."""
    address, proc = served
    conns = idle_connections(address, 2000)
    try:
        time.sleep(0.5)
        assert psutil.Process(proc.pid).num_fds() > 2000  # all of them held by the server
        answers_within_deadlines(address)
    finally:
        for s in conns:
            s.close()


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closes `s` within `seconds` (anything it sends first, a GOAWAY say, is read)."""
    s.settimeout(seconds)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if not s.recv(65536):
                return True
    except TimeoutError:
        return False
    except OSError:  # reset
        return True
    return False


def test_silent_and_idle_connections_are_closed(model_store):
    from tests.conftest import start_server

    running = start_server(model_store, reload_interval_s=0, metrics_port=-1, handshake_timeout_s=0.5,
                           connection_idle_s=0.5)
    try:
        host, port = running.target.rsplit(":", 1)
        silent = socket.create_connection((host, int(port)))  # never sends its HTTP/2 preface
        idle = idle_connections(running.target, 1)[0]  # a set-up connection without calls
        assert _closed_within(silent, 10) and _closed_within(idle, 10)
        answers_within_deadlines(running.target)
    finally:
        running.app.stop(0)


def test_the_metrics_endpoint_holds_no_thread_per_idle_connection(model_store, monkeypatch):
    from server import telemetry
    from tests.conftest import start_server

    monkeypatch.setattr(telemetry._QuietHandler, "timeout", 1.0)
    running = start_server(model_store, reload_interval_s=0, metrics_port=0)
    try:
        url = f"http://127.0.0.1:{running.app.metrics_port}/metrics"
        threads = threading.active_count()
        conns = [socket.create_connection(("127.0.0.1", running.app.metrics_port)) for _ in range(300)]
        time.sleep(0.5)
        held = threading.active_count() - threads
        assert held <= telemetry.METRICS_CONNECTIONS  # (the stock server: one thread each, 300)
        assert all(_closed_within(s, 5) for s in conns[:5])  # silent ones are closed after the idle timeout
        for s in conns:
            s.close()
        time.sleep(0.5)
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert b"ganserve_requests_total" in reply.read() or reply.status == 200
    finally:
        running.app.stop(0)


# -- F11: the SDK says when a token would travel in clear ------------------------------------------------------

@pytest.mark.parametrize("target,options,warns", [
    ("10.0.0.7:50051", {}, True), ("example.com:443", {}, True), ("dns:///example.com:50051", {}, True),
    ("localhost:50051", {}, False), ("127.0.0.1:50051", {}, False), ("[::1]:50051", {}, False),
    ("unix:/tmp/ganserve.sock", {}, False), ("example.com:443", {"tls": True}, False)])
def test_the_sdk_warns_before_sending_a_token_in_clear_off_this_machine(target, options, warns):
    from sdk import Client

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Client(target, token="t", **options).close()
        Client(target, **options).close()  # no token: nothing to say
    said = [str(w.message) for w in caught if "without TLS" in str(w.message)]
    assert len(said) == (1 if warns else 0), said
    if warns:
        assert said[0].startswith(f"sending a bearer token without TLS to {target}") and "tls=True" in said[0]
