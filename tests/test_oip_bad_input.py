"""Bad input over the Open Inference Protocol (v2): each mistake gets its status over gRPC and over REST, and a
message naming the input; random requests never get INTERNAL, UNKNOWN or a 500.

The cases are also the v2 table of docs/bad_input.md (tests/test_server_bad_input.py writes the page and checks
it is current); the server here, like the page's, takes messages of at most 1 MiB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.inference import grpc_predict_v2_pb2 as v2
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from server.oip import NUMPY
from tests.conftest import start_server
from tests.test_oip import http

IA, NF, RE = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED
SEED = ("seed", "INT64", [1], [1])
BINARY_HEADER = (b'{"inputs": [{"name": "seed", "datatype": "INT64", "shape": [1], '
                 b'"parameters": {"binary_data_size": 8}}]}')


@dataclass
class Case:
    what: str
    grpc_code: grpc.StatusCode | None  # None: a REST-only mistake
    http_status: int | None            # None: a gRPC-only mistake
    field: str | None                  # the message starts with "<field>: " (None: a transport's own message)
    inputs: list = field(default_factory=lambda: [SEED])  # (name, datatype, shape, values or raw bytes)
    model: str = "tiny-cgan"
    version: str = ""
    params: dict = field(default_factory=dict)
    outputs: tuple = ()
    raw_entries: int | None = None     # gRPC: send this many raw_input_contents entries
    body: bytes | None = None          # REST: this body instead of the inputs' JSON
    headers: dict = field(default_factory=dict)
    path: str = ""                     # REST: this path (and GET) instead of the model's infer route


def _labels(values, datatype="INT64"):
    return ("labels", datatype, [len(values)], values)


CASES = [
    Case("unknown model", NF, 404, "model_name", model="nope"),
    Case("unknown version", NF, 404, "model_name", version="7"),
    Case("malformed version", IA, 400, "model_version", version="x1"),
    Case("v1's name@version as the model name", IA, 400, "model_name", model="tiny-cgan@1"),
    Case("the evaluator (a classifier, not a v2 model)", NF, 404, "model_name", model="tiny-eval"),
    Case("missing seed", IA, 400, "seed", inputs=[_labels([1])]),
    Case("seed of the wrong datatype (FP32)", IA, 400, "seed.datatype", inputs=[("seed", "FP32", [1], [1.0])]),
    Case("unknown datatype", IA, 400, "seed.datatype", inputs=[("seed", "FP8", [1], b"\0")]),
    Case("seed of the wrong shape", IA, 400, "seed.shape", inputs=[("seed", "INT64", [2], [1, 2])]),
    Case("data not matching the shape", IA, 400, "seed.data", inputs=[("seed", "INT64", [1], [1, 2])]),
    Case("negative dimension", IA, 400, "seed.shape", inputs=[("seed", "INT64", [-1], [])]),
    Case("negative seed", IA, 400, "seed", inputs=[("seed", "INT64", [1], [-5]), _labels([1])]),
    Case("n = 0", IA, 400, "n", inputs=[SEED, ("n", "INT64", [1], [0]), _labels([1])]),
    Case("n over the limit (1025 > 1024)", IA, 400, "n", inputs=[SEED, ("n", "INT64", [1], [1025]), _labels([1])]),
    Case("n of the wrong datatype (FP32)", IA, 400, "n.datatype", inputs=[SEED, ("n", "FP32", [1], [2.0])]),
    Case("label out of range (4 of 0..3)", IA, 400, "labels[0]", inputs=[SEED, _labels([4])]),
    Case("negative label", IA, 400, "labels[1]", inputs=[SEED, _labels([0, -1])]),
    Case("label count not 1 and not n", IA, 400, "labels",
         inputs=[SEED, ("n", "INT64", [1], [5]), _labels([0, 1, 2])]),
    Case("labels of the wrong shape", IA, 400, "labels.shape", inputs=[SEED, ("labels", "INT64", [1, 1], [1])]),
    Case("no labels for a conditional model", IA, 400, "labels"),
    Case("labels for an unconditional model", IA, 400, "inputs[labels]", model="tiny-gan", inputs=[SEED, _labels([1])]),
    Case("labels and soft labels together", IA, 400, "labels",
         inputs=[SEED, _labels([1]), ("soft_labels", "FP32", [1, 4], [1, 0, 0, 0])]),
    Case("soft labels not summing to 1", IA, 400, "soft_labels.data",
         inputs=[SEED, ("soft_labels", "FP32", [1, 4], [0.5, 0.4, 0, 0])]),
    Case("latents of the wrong shape", IA, 400, "latents.shape", model="tiny-gan",
         inputs=[("latents", "FP32", [2, 7], [0.0] * 14)]),
    Case("latents and seed together", IA, 400, "seed", model="tiny-gan",
         inputs=[SEED, ("latents", "FP32", [1, 8], [0.0] * 8)]),
    Case("latents with NaN", IA, 400, "latents.data", model="tiny-gan",
         inputs=[("latents", "FP32", [1, 8], [float("nan")] * 8)]),
    Case("truncation too small (0.01)", IA, 400, "truncation", model="tiny-gan",
         inputs=[SEED, ("truncation", "FP32", [1], [0.01])]),
    Case("unknown input", IA, 400, "inputs[z]", inputs=[SEED, ("z", "FP32", [1, 8], [0.0] * 8)]),
    Case("input given twice", IA, 400, "inputs[seed]", inputs=[SEED, SEED]),
    Case("unknown output requested", IA, 400, "outputs[images]", inputs=[SEED, _labels([1])], outputs=("images",)),
    Case("unknown samples_datatype", IA, 400, "parameters.samples_datatype", inputs=[SEED, _labels([1])],
         params={"samples_datatype": "PNG"}),
    Case("UINT8 samples of a points model", IA, 400, "parameters.samples_datatype", model="tiny-points",
         params={"samples_datatype": "UINT8"}),
    Case("timeout parameter not an integer", IA, 400, "parameters.timeout", inputs=[SEED, _labels([1])],
         params={"timeout": "soon"}),
    Case("raw_input_contents not one per input", IA, None, "raw_input_contents", inputs=[SEED, _labels([1])],
         raw_entries=1),
    Case("malformed JSON", None, 400, "body", body=b'{"inputs": [}'),
    Case("body not a JSON object", None, 400, "body", body=b"[1, 2]"),
    Case("inputs not a list", None, 400, "inputs", body=b'{"inputs": {"seed": 1}}'),
    Case("JSON data of the wrong type (strings for INT64)", None, 400, "seed.data",
         body=b'{"inputs": [{"name": "seed", "datatype": "INT64", "shape": [1], "data": ["1"]}]}'),
    Case("binary_data_size beyond the body", None, 400, "seed.parameters.binary_data_size",
         body=BINARY_HEADER + b"1234", headers={"Inference-Header-Content-Length": str(len(BINARY_HEADER))}),
    Case("Inference-Header-Content-Length past the body", None, 400, "Inference-Header-Content-Length",
         body=b"{}", headers={"Inference-Header-Content-Length": "99"}),
    Case("compressed body (Content-Encoding gzip)", None, 400, None, body=b"\x1f\x8b",
         headers={"Content-Encoding": "gzip"}),
    Case("body of 1.2 MB over a 1 MiB limit (`--max-request-bytes`)", RE, 413, None,
         inputs=[("latents", "FP32", [300_000], b"\0" * 1_200_000)]),
    Case("unknown route", None, 404, None, path="/v2/model/tiny-cgan"),
    Case("GET on the infer route", None, 405, None, path="/v2/models/tiny-cgan/infer"),
]


def grpc_call(stub, case: Case):
    req = v2.ModelInferRequest(model_name=case.model, model_version=case.version)
    for name, datatype, shape, values in case.inputs:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
        raw = values if isinstance(values, bytes) else np.asarray(values, NUMPY[datatype]).tobytes()
        req.raw_input_contents.append(raw)
    if case.raw_entries is not None:
        del req.raw_input_contents[case.raw_entries:]
    for key, value in case.params.items():
        req.parameters[key].string_param = value
    for name in case.outputs:
        req.outputs.add(name=name)
    return stub.ModelInfer(req, timeout=30)


def http_call(port: int, case: Case) -> tuple[int, bytes]:
    if case.path:
        status, _, body = http(port, case.path)
        return status, body
    version = f"/versions/{case.version}" if case.version else ""
    body = case.body
    if body is None:
        inputs = [{"name": n, "datatype": d, "shape": s,
                   "data": list(np.frombuffer(v, np.uint8).tolist()) if isinstance(v, bytes) else v}
                  for n, d, s, v in case.inputs]
        body = json.dumps({"inputs": inputs, "parameters": case.params,
                           "outputs": [{"name": o} for o in case.outputs]}).encode()
    status, _, data = http(port, f"/v2/models/{case.model}{version}/infer", body, case.headers)
    return status, data


@pytest.fixture(scope="module")
def served(model_store):
    running = start_server(model_store, reload_interval_s=0, metrics_port=-1, http_port=0, max_request_bytes=1 << 20)
    yield running
    running.app.stop(0)


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input_over_grpc_and_rest(served, case):
    if case.grpc_code is not None:
        with grpc.insecure_channel(served.target) as channel, pytest.raises(grpc.RpcError) as err:
            grpc_call(v2_grpc.GRPCInferenceServiceStub(channel), case)
        assert err.value.code() == case.grpc_code, err.value.details()
        if case.field:
            assert err.value.details().startswith(f"{case.field}: "), err.value.details()
    if case.http_status is not None:
        status, body = http_call(served.app.http.port, case)
        message = json.loads(body)["error"]
        assert status == case.http_status, message
        if case.field:
            assert message.startswith(f"{case.field}: "), message


def markdown_section(target: str, http_port: int) -> str:
    """docs/bad_input.md's v2 part, from a live server: input -> gRPC status, REST status, message."""
    rows = ["| input | gRPC status | REST status | message |", "| --- | --- | --- | --- |"]
    with grpc.insecure_channel(target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        for case in CASES:
            code = message = "-"
            if case.grpc_code is not None:
                try:
                    grpc_call(stub, case)
                    code = "OK"
                except grpc.RpcError as e:
                    code, message = e.code().name, e.details()
            status = "-"
            if case.http_status is not None:
                status, body = http_call(http_port, case)
                if message == "-":
                    message = json.loads(body)["error"]
            rows.append(f"| {case.what} | {code} | {status} | `{message.replace('|', '/')}` |")
    return "\n".join(rows)


# -- property test: random requests over both bindings --------------------------------------------------------

NAMES = st.sampled_from(["seed", "n", "labels", "soft_labels", "latents", "truncation", "x", ""])
DATATYPES = st.sampled_from(["INT64", "INT32", "UINT64", "FP32", "FP64", "UINT8", "BOOL", "FP16", "BYTES", "?"])
MODELS = st.sampled_from(["tiny-cgan", "tiny-gan", "tiny-points", "tiny-eval", "nope", "", "../x"])


@st.composite
def tensors(draw):
    shape = draw(st.lists(st.integers(-2, 6), max_size=3))
    return draw(NAMES), draw(DATATYPES), shape, draw(st.binary(max_size=64))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=MODELS, version=st.sampled_from(["", "1", "2", "0", "x"]), inputs=st.lists(tensors(), max_size=4),
       params=st.dictionaries(st.sampled_from(["samples_datatype", "timeout", "binary_data_output", "y"]),
                              st.sampled_from(["UINT8", "FP32", "", 1, -1, True, 2**40])),
       outputs=st.lists(st.sampled_from(["samples", "x"]), max_size=2), as_json=st.booleans())
def test_random_requests_never_internal(served, model, version, inputs, params, outputs, as_json):
    req = v2.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape, raw in inputs:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
        req.raw_input_contents.append(raw)
    for key, value in params.items():
        p = req.parameters[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        else:
            p.string_param = value
    for name in outputs:
        req.outputs.add(name=name)
    with grpc.insecure_channel(served.target) as channel:
        try:
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=30)
        except grpc.RpcError as e:
            assert e.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), e.details()
    # the same over REST, the data as JSON numbers (a byte per value) or as binary after the header
    tensors_json, blobs = [], b""
    for name, datatype, shape, raw in inputs:
        entry = {"name": name, "datatype": datatype, "shape": shape}
        if as_json:
            entry["data"] = list(raw)
        else:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs += raw
        tensors_json.append(entry)
    header = json.dumps({"inputs": tensors_json, "parameters": params,
                         "outputs": [{"name": o} for o in outputs]}).encode()
    path = f"/v2/models/{model}{f'/versions/{version}' if version else ''}/infer"
    status, _, body = http(served.app.http.port, path, header + blobs,
                           {} if as_json else {"Inference-Header-Content-Length": str(len(header))})
    assert status < 500 or status in (503, 504), body
    assert status == 200 or "error" in json.loads(body)
