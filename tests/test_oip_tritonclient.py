"""tritonclient (PyPI, no ganserve code) against a real ganserve over the Open Inference Protocol.

tritonclient's generated `inference` messages and ganserve's protos/inference/ copy cannot live in one Python
process (protobuf's default pool refuses a second file defining the same names), and this process imports the
server's. So tritonclient runs in a child process: examples/tritonclient_v2.py for the calls, a few lines for
its descriptors.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from protos.inference import grpc_predict_v2_pb2 as v2
from tests.conftest import start_server
from tests.test_server_shipped_models import STORE, _classify, _need

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                                reason="pip install tritonclient packaging geventhttpclient (the dev extra has them)")

_DUMP = """
import base64, sys
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2
proto = descriptor_pb2.FileDescriptorProto()
service_pb2.DESCRIPTOR.CopyToProto(proto)
sys.stdout.write(base64.b64encode(proto.SerializeToString()).decode())
"""


def _messages(file: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message (nested ones too) by its full name."""
    out = {}

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        out[name] = message
        for nested in message.nested_type:
            walk(name, nested)

    for m in file.message_type:
        walk(f".{file.package}", m)
    return out


def _fields(message: descriptor_pb2.DescriptorProto) -> dict[str, tuple]:
    oneofs = [o.name for o in message.oneof_decl]
    return {f.name: (f.number, f.type, f.label, f.type_name, oneofs[f.oneof_index] if f.HasField("oneof_index") else "",
                     f.json_name) for f in message.field}


def test_descriptors_match_the_ones_tritonclient_ships():
    done = subprocess.run([sys.executable, "-c", _DUMP], capture_output=True, text=True, timeout=120, check=True)
    theirs = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(done.stdout))
    ours = descriptor_pb2.FileDescriptorProto()
    v2.DESCRIPTOR.CopyToProto(ours)
    assert ours.package == theirs.package == "inference" and ours.syntax == theirs.syntax == "proto3"
    # the service: our six RPCs are theirs, with the same request and response messages
    (ours_service,) = ours.service
    (theirs_service,) = [s for s in theirs.service if s.name == "GRPCInferenceService"]
    their_methods = {m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
                     for m in theirs_service.method}
    assert [m.name for m in ours_service.method] == ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                                     "ModelMetadata", "ModelInfer"]
    for m in ours_service.method:
        assert their_methods[m.name] == (m.input_type, m.output_type, False, False), m.name
    # every message we define is theirs, field for field (name, number, type, label, message type, oneof)
    mine, their = _messages(ours), _messages(theirs)
    assert len(mine) == 23  # 14 messages, 4 nested tensor messages, 5 map entries
    for name, message in mine.items():
        assert name in their, name
        assert _fields(message) == _fields(their[name]), name
        assert message.options.map_entry == their[name].options.map_entry, name


def test_tritonclient_grpc_and_http_against_a_real_ganserve(tmp_path):
    _need("cgan-mnist", "mnist-evaluator")
    running = start_server(STORE, reload_interval_s=0, metrics_port=-1, http_port=0)
    try:
        out = tmp_path / "samples.npz"
        done = subprocess.run([sys.executable, str(ROOT / "examples" / "tritonclient_v2.py"), "--grpc", running.target,
                               "--http", f"127.0.0.1:{running.app.http.port}", "--model", "cgan-mnist",
                               "--label", "7", "--n", "16", "--seed", "2026", "--out", str(out)],
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        for kind in ("grpc", "http"):
            assert f"{kind}: live=True ready=True model_ready=True" in lines
            meta = json.loads(next(x for x in lines if x.startswith(f"{kind}: metadata ")).split(" ", 2)[2])
            shapes = {t["name"]: [int(d) for d in t["shape"]] for t in meta["inputs"]}
            assert shapes == {"seed": [1], "n": [1], "labels": [-1], "soft_labels": [-1, 10], "latents": [-1, 16],
                              "truncation": [1]}
            assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["outputs"]] == [
                ("samples", "FP32", [-1, 1, 28, 28])]
        got = np.load(out)
        import grpc

        with grpc.insecure_channel(running.target) as channel:
            v1 = pb_grpc.GeneratorServiceStub(channel).SampleConditional(
                pb.SampleConditionalRequest(model="cgan-mnist", n=16, seed=2026, labels=[7]))
        want = tensors.to_array(v1.samples)
        for kind in ("grpc", "http"):
            assert got[kind].dtype == np.float32 and got[kind].shape == (16, 1, 28, 28)
            assert got[kind].tobytes() == want.tobytes(), kind  # byte-identical to v1 for the seed
        # and the evaluator calls them sevens: cgan-mnist follows its label ~98% of the time (its manifest), so on
        # this fixed seed 15 of the 16 (one reads as a 9); the seed is fixed, so this cannot flake
        assert (_classify(got["grpc"]) == 7).sum() >= 15
    finally:
        running.app.stop(0)
