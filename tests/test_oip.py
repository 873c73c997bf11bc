"""The Open Inference Protocol (KServe v2) over gRPC and REST, on a real server over the tiny models.

The same seed gives the same bytes as v1; metadata lists the true inputs and outputs; a v2 call and a v1 call
share a batch; the token, the admission limit, the metrics, deadlines and the native front end apply to v2 as
to v1. tritonclient itself is in tests/test_oip_tritonclient.py; bad input in tests/test_oip_bad_input.py.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from protos.inference import grpc_predict_v2_pb2 as v2
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.conftest import start_server

TOKEN = ("authorization", "Bearer s3cret")
NUMPY = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64}


def grpc_request(model: str, inputs: dict, *, version: str = "", params: dict | None = None,
                 outputs: tuple = (), raw: bool = True) -> v2.ModelInferRequest:
    """A ModelInferRequest from {name: (datatype, values)} (shape: the values' own), raw bytes or typed contents."""
    req = v2.ModelInferRequest(model_name=model, model_version=version, id="req-1")
    for name, (datatype, values) in inputs.items():
        array = np.asarray(values, NUMPY[datatype])
        t = req.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            req.raw_input_contents.append(array.tobytes())
        else:
            field = {"INT64": "int64_contents", "INT32": "int_contents", "FP32": "fp32_contents",
                     "UINT64": "uint64_contents"}[datatype]
            getattr(t.contents, field).extend(array.reshape(-1).tolist())
    for key, value in (params or {}).items():
        p = req.parameters[key]
        setattr(p, {str: "string_param", bool: "bool_param", int: "int64_param", float: "double_param"}[type(value)],
                value)
    for name in outputs:
        req.outputs.add(name=name)
    return req


def samples(reply: v2.ModelInferResponse) -> np.ndarray:
    (out,) = reply.outputs
    return np.frombuffer(reply.raw_output_contents[0], {"FP32": np.float32, "UINT8": np.uint8}[out.datatype]
                         ).reshape(out.shape)


def http(port: int, path: str, body: dict | bytes | None = None, headers: dict | None = None,
         method: str | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one HTTP request to the v2 REST port."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def json_inputs(inputs: dict) -> list[dict]:
    return [{"name": n, "datatype": d, "shape": list(np.shape(v)), "data": np.asarray(v).reshape(-1).tolist()}
            for n, (d, v) in inputs.items()]


@pytest.fixture(scope="module")
def served(model_store):
    running = start_server(model_store, reload_interval_s=0, http_port=0)
    yield running
    running.app.stop(0)


@pytest.fixture(scope="module")
def stubs(served):
    with grpc.insecure_channel(served.target) as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel), pb_grpc.GeneratorServiceStub(channel)


# -- metadata and health ------------------------------------------------------------------------------------

def test_server_live_ready_and_metadata(served, stubs):
    stub, _ = stubs
    assert stub.ServerLive(v2.ServerLiveRequest()).live and stub.ServerReady(v2.ServerReadyRequest()).ready
    meta = stub.ServerMetadata(v2.ServerMetadataRequest())
    assert (meta.name, list(meta.extensions)) == ("ganserve", ["binary_tensor_data"])
    port = served.app.http.port
    assert http(port, "/v2/health/live")[:1] == (200,) and http(port, "/v2/health/ready")[0] == 200
    status, _, body = http(port, "/v2")
    assert status == 200 and json.loads(body) == {"name": "ganserve", "version": meta.version,
                                                  "extensions": ["binary_tensor_data"]}


@pytest.mark.parametrize("model,inputs,output", [
    ("tiny-cgan", [("seed", "INT64", [1]), ("n", "INT64", [1]), ("labels", "INT64", [-1]),
                   ("soft_labels", "FP32", [-1, 4]), ("latents", "FP32", [-1, 8]), ("truncation", "FP32", [1])],
     [-1, 1, 8, 8]),
    ("tiny-gan", [("seed", "INT64", [1]), ("n", "INT64", [1]), ("latents", "FP32", [-1, 8]),
                  ("truncation", "FP32", [1])], [-1, 1, 8, 8]),
    ("tiny-points", [("seed", "INT64", [1]), ("n", "INT64", [1]), ("latents", "FP32", [-1, 2]),
                     ("truncation", "FP32", [1])], [-1, 2]),
])
def test_model_metadata_lists_the_true_inputs_and_outputs(served, stubs, model, inputs, output):
    meta = stubs[0].ModelMetadata(v2.ModelMetadataRequest(name=model))
    assert (meta.name, list(meta.versions), meta.platform) == (model, ["1"], "ganserve")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == inputs
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("samples", "FP32", output)]
    status, _, body = http(served.app.http.port, f"/v2/models/{model}/versions/1")
    assert status == 200 and json.loads(body) == {
        "name": model, "versions": ["1"], "platform": "ganserve",
        "inputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in inputs],
        "outputs": [{"name": "samples", "datatype": "FP32", "shape": output}]}
    assert stubs[0].ModelReady(v2.ModelReadyRequest(name=model, version="1")).ready
    assert http(served.app.http.port, f"/v2/models/{model}/ready") == (200, http(
        served.app.http.port, f"/v2/models/{model}/ready")[1], b"")


# -- the same bytes as v1 -----------------------------------------------------------------------------------

V1_PAIRS = [  # (v2 model, v2 inputs, v2 parameters, the v1 method and request that must give the same bytes)
    ("tiny-cgan", {"seed": ("INT64", [5]), "labels": ("INT64", [1, 2, 3])}, {},
     "SampleConditional", pb.SampleConditionalRequest(model="tiny-cgan", n=3, seed=5, labels=[1, 2, 3])),
    ("tiny-cgan", {"seed": ("INT64", [9]), "n": ("INT32", [4]), "labels": ("INT64", [2])},
     {"samples_datatype": "UINT8"},
     "SampleConditional", pb.SampleConditionalRequest(model="tiny-cgan", n=4, seed=9, labels=[2],
                                                      encoding=pb.ENCODING_UINT8)),
    ("tiny-cgan", {"seed": ("UINT64", [2**64 - 1]), "soft_labels": ("FP32", [[0.5, 0.5, 0, 0]] * 2)}, {},
     "SampleConditional", pb.SampleConditionalRequest(
         model="tiny-cgan", n=2, seed=2**64 - 1, soft_labels=tensors.from_array(np.array([[0.5, 0.5, 0, 0]] * 2)))),
    ("tiny-gan", {"seed": ("INT64", [3]), "n": ("INT64", [6]), "truncation": ("FP32", [0.7])}, {},
     "Sample", pb.SampleRequest(model="tiny-gan", n=6, seed=3, truncation=0.7)),
    ("tiny-gan", {"latents": ("FP32", np.linspace(-2, 2, 16).reshape(2, 8))}, {},
     "Sample", pb.SampleRequest(model="tiny-gan", latents=tensors.from_array(np.linspace(-2, 2, 16).reshape(2, 8)))),
    ("tiny-points", {"seed": ("INT64", [1]), "n": ("INT64", [5])}, {},
     "Sample", pb.SampleRequest(model="tiny-points", n=5, seed=1)),
]


@pytest.mark.parametrize("model,inputs,params,method,v1", V1_PAIRS, ids=[f"{p[0]}-{i}" for i, p in enumerate(V1_PAIRS)])
def test_same_seed_same_bytes_as_v1_over_grpc_and_rest(served, stubs, model, inputs, params, method, v1):
    stub, v1_stub = stubs
    want = tensors.to_array(getattr(v1_stub, method)(v1).samples)
    for raw in (True, False):  # raw_input_contents, then typed contents
        reply = stub.ModelInfer(grpc_request(model, inputs, params=params, raw=raw))
        assert (reply.model_name, reply.model_version, reply.id) == (model, "1", "req-1")
        got = samples(reply)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    port = served.app.http.port
    body = {"inputs": json_inputs(inputs), "parameters": params}
    status, headers, data = http(port, f"/v2/models/{model}/infer", body)  # JSON out
    assert status == 200 and headers["content-type"] == "application/json", data
    (out,) = json.loads(data)["outputs"]
    assert out["shape"] == list(want.shape)
    assert out["datatype"] == {"float32": "FP32", "uint8": "UINT8"}[want.dtype.name]
    assert np.asarray(out["data"], want.dtype).tobytes() == want.tobytes()  # JSON numbers round-trip exactly
    body["parameters"] = {**params, "binary_data_output": True}
    status, headers, data = http(port, f"/v2/models/{model}/versions/1/infer", body)  # binary out
    length = int(headers["inference-header-content-length"])
    assert status == 200 and json.loads(data[:length])["outputs"][0]["parameters"] == {"binary_data_size": want.nbytes}
    assert data[length:] == want.tobytes()


def test_binary_inputs_over_rest(served, stubs):
    seed, labels = np.array([4], np.int64), np.array([3, 0], np.int64)
    header = json.dumps({"inputs": [
        {"name": "seed", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}},
        {"name": "labels", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}}],
        "outputs": [{"name": "samples", "parameters": {"binary_data": True}}]}).encode()
    status, headers, data = http(served.app.http.port, "/v2/models/tiny-cgan/infer",
                                 header + seed.tobytes() + labels.tobytes(),
                                 {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200, data
    want = stubs[1].SampleConditional(pb.SampleConditionalRequest(model="tiny-cgan", n=2, seed=4, labels=[3, 0]))
    assert data[int(headers["inference-header-content-length"]):] == tensors.to_array(want.samples).tobytes()


# -- one batcher, one set of edges --------------------------------------------------------------------------

def test_a_v2_call_and_a_v1_call_share_a_batch(model_store):
    running = start_server(model_store, reload_interval_s=0, max_queue_delay_ms=300, metrics_port=-1)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub, v1_stub = v2_grpc.GRPCInferenceServiceStub(channel), pb_grpc.GeneratorServiceStub(channel)
            with ThreadPoolExecutor(2) as pool:
                v2_request = grpc_request("tiny-gan", {"seed": ("INT64", [1]), "n": ("INT64", [5])})
                a = pool.submit(stub.ModelInfer, v2_request)
                b = pool.submit(v1_stub.Sample, pb.SampleRequest(model="tiny-gan", n=3, seed=2))
                a.result(timeout=30), b.result(timeout=30)
        stats = {s.name.rsplit("_", 1)[1]: s.value for m in running.app.telemetry.batch.collect() for s in m.samples
                 if s.labels.get("model") == "tiny-gan@1" and s.name.endswith(("_count", "_sum"))}
        assert stats == {"count": 1, "sum": 8}  # one generator run of 5 + 3 rows
    finally:
        running.app.stop(0)


def test_token_admission_metrics_and_deadline(model_store):
    running = start_server(model_store, reload_interval_s=0, http_port=0, auth_token="s3cret", max_concurrent_rpcs=2)
    port, good = running.app.http.port, dict([TOKEN])
    request = grpc_request("tiny-gan", {"seed": ("INT64", [1])})
    body = {"inputs": json_inputs({"seed": ("INT64", [1])})}
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            # probes are open; everything else needs the token
            assert stub.ServerLive(v2.ServerLiveRequest()).live and stub.ServerReady(v2.ServerReadyRequest()).ready
            assert http(port, "/v2/health/ready")[0] == 200
            for call in (lambda: stub.ModelInfer(request),
                         lambda: stub.ModelMetadata(v2.ModelMetadataRequest(name="x"))):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            status, headers, data = http(port, "/v2/models/tiny-gan/infer", body, {"authorization": "Bearer nope"})
            assert (status, headers["www-authenticate"]) == (401, "Bearer") and b"bearer token" in data
            assert http(port, "/v2/models/tiny-gan", headers={})[0] == 401
            assert stub.ModelInfer(request, metadata=[TOKEN]).outputs[0].name == "samples"
            assert http(port, "/v2/models/tiny-gan/infer", body, good)[0] == 200
            # the admission limit (2 calls in progress) holds v2 calls too
            release = threading.Event()
            held = [running.app.pool.submit(release.wait) for _ in range(2)]
            try:
                with pytest.raises(grpc.RpcError) as err:
                    stub.ModelInfer(request, metadata=[TOKEN])
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert http(port, "/v2/models/tiny-gan/infer", body, good)[0] == 429
                assert http(port, "/v2/health/live")[0] == 200  # probes are never refused
            finally:
                release.set()
                [h.result(timeout=10) for h in held]
            # Triton's `timeout` parameter (microseconds) is a deadline
            late = grpc_request("tiny-gan", {"seed": ("INT64", [1])}, params={"timeout": 1})
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(late, metadata=[TOKEN])
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert http(port, "/v2/models/tiny-gan/infer", {**body, "parameters": {"timeout": 1}}, good)[0] == 504
        text = urllib.request.urlopen(f"http://127.0.0.1:{running.app.metrics_port}/metrics").read().decode()
        for line in ('method="ModelInfer",model="tiny-gan@1"} 1.0', 'method="http:ModelInfer",model="tiny-gan@1"} 1.0',
                     'code="RESOURCE_EXHAUSTED",method="http:ModelInfer",model="-"} 1.0',
                     'code="UNAUTHENTICATED",method="http:ModelInfer",model="-"} 1.0'):
            assert line in text.replace('code="OK",', ""), line
    finally:
        running.app.stop(0)


def test_rest_body_limit_and_readiness_while_draining(model_store):
    running = start_server(model_store, reload_interval_s=0, http_port=0, metrics_port=-1, max_request_bytes=4096)
    port = running.app.http.port
    try:
        status, _, data = http(port, "/v2/models/tiny-gan/infer", b"{" + b" " * 5000 + b"}")
        assert status == 413 and json.loads(data)["error"].startswith("request body over the limit of 4096 bytes")
        assert http(port, "/v2/health/ready")[0] == 200
        running.app.serving = False  # what stop() does first
        assert http(port, "/v2/health/ready")[0] == 503 and http(port, "/v2/health/live")[0] == 200
    finally:
        running.app.stop(0)


def test_v2_through_the_native_front_end(model_store):
    from server.config import Config
    from server.frontend import NativeFrontend
    from tests.conftest import native_binaries

    native_binaries()
    front = NativeFrontend(Config(address="127.0.0.1:0", store=str(model_store), metrics_port=-1,
                                  reload_interval_s=0, drain_s=2)).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            stub, v1_stub = v2_grpc.GRPCInferenceServiceStub(channel), pb_grpc.GeneratorServiceStub(channel)
            reply = stub.ModelInfer(grpc_request("tiny-cgan", {"seed": ("INT64", [8]), "labels": ("INT64", [1, 3])}))
            want = v1_stub.SampleConditional(pb.SampleConditionalRequest(model="tiny-cgan", n=2, seed=8, labels=[1, 3]))
            assert samples(reply).tobytes() == tensors.to_array(want.samples).tobytes()
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(grpc_request("tiny-cgan", {"seed": ("INT64", [8]), "labels": ("INT64", [9])}))
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                              "labels[0]: must be in 0..3, got 9")
    finally:
        front.stop()


def test_bench_load_targets_v1_and_v2_ask_for_the_same_work(served):
    """bench/oip.py compares these two load targets: the same samples, the same bytes of samples."""
    from bench.load import GrpcTarget, GrpcV2Target

    spec = {"address": served.target, "model": "tiny-cgan", "num_classes": 4}
    v1, v2_target = GrpcTarget(spec, 1), GrpcV2Target(spec, 1)
    try:
        for encoding in ("float32", "uint8"):
            size1, size2 = v1.call(0, 7, 16, encoding), v2_target.call(0, 7, 16, encoding)
            per_sample = 64 * (4 if encoding == "float32" else 1)
            # (v1 also returns the conditions, 16 x 4 floats)
            assert size1 > 16 * per_sample and size2 > 16 * per_sample and abs(size1 - size2) <= 300
    finally:
        v1.close()
        v2_target.close()


def test_rest_over_tls_with_client_certificates(model_store, tmp_path):
    """The REST port takes the gRPC port's TLS settings: HTTPS, and a client certificate when a CA is set."""
    import ssl

    from tests.test_server_reliability import _certificates

    c = _certificates(tmp_path)
    running = start_server(model_store, reload_interval_s=0, metrics_port=-1, address="localhost:0", http_port=0,
                           http_address="localhost", tls_cert=str(c["server_cert"]), tls_key=str(c["server_key"]),
                           tls_client_ca=str(c["ca_cert"]))
    url = f"https://localhost:{running.app.http.port}/v2/models/tiny-gan"
    try:
        context = ssl.create_default_context(cafile=str(c["ca_cert"]))
        context.load_cert_chain(str(c["client_cert"]), str(c["client_key"]))
        with urllib.request.urlopen(url, context=context, timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read())["name"] == "tiny-gan"
        no_cert = ssl.create_default_context(cafile=str(c["ca_cert"]))
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            urllib.request.urlopen(url, context=no_cert, timeout=10).read()
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(url.replace("https", "http"), timeout=10).read()
    finally:
        running.app.stop(0)


@pytest.mark.slow
def test_workers_share_the_rest_port(model_store):
    """`--workers 2 --http-port P`: the supervisor claims P, both workers serve it (SO_REUSEPORT), SIGTERM stops all."""
    from tests.conftest import free_port
    from tests.test_server_workers import _serving, _start

    port, http_port = free_port(), free_port()
    proc = _start(model_store, port, "--workers", "2", "--http-port", str(http_port))
    try:
        _serving(f"127.0.0.1:{port}")
        body = {"inputs": json_inputs({"seed": ("INT64", [3]), "n": ("INT64", [2])})}
        replies, deadline = [], time.monotonic() + 60
        while len(replies) < 8:  # a new connection each time: the kernel spreads them over the workers
            status, _, data = http(http_port, "/v2/models/tiny-gan/infer", body)
            assert status in (200, 503) and time.monotonic() < deadline, data  # 503: a worker still loading
            if status == 200:
                replies.append(data)
        assert len(set(replies)) == 1  # every worker gives the same bytes for the seed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
