"""Reduced-precision variants: the sub-pixel rewrite, int8 quantization, the manifest's precision, the version
policy's treatment of variants, and `name@int8` through a real server."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ganserve.store import __main__ as store_cli
from ganserve.store import manifest as mf
from ganserve.store import policy as P
from ganserve.store import quantize as Q
from ganserve.store import sessions
from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from tests.conftest import start_server

ROOT = Path(__file__).resolve().parents[1]
GAN = ROOT / "model_store" / "gan-mnist" / "9"


def _convt_model(cin=3, cout=5, h=6, bias=True, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((cin, cout, 4, 4)).astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
        ins.append("b")
    node = helper.make_node("ConvTranspose", ins, ["y"], kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, h, h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cout, 2 * h, 2 * h])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("bias,h", [(True, 6), (False, 7), (True, 1)])
def test_subpixel_rewrite_equals_convtranspose(bias, h):
    model = _convt_model(bias=bias, h=h)
    x = np.random.default_rng(1).standard_normal((2, 3, h, h)).astype(np.float32)
    want = sessions.open_session(model.SerializeToString()).run(None, {"x": x})[0]
    rewritten, count = Q.subpixel_convtranspose(_convt_model(bias=bias, h=h))
    assert count == 1 and "ConvTranspose" not in {n.op_type for n in rewritten.graph.node}
    got = sessions.open_session(rewritten.SerializeToString()).run(None, {"x": x})[0]
    assert got.shape == want.shape == (2, 5, 2 * h, 2 * h)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_other_convtranspose_left_alone():
    model = _convt_model()
    model.graph.node[0].attribute[2].ints[:] = [0, 0, 0, 0]  # pads 0: not the stride-2 k4 p1 form
    assert Q.subpixel_convtranspose(model)[1] == 0


def _feeds(dim: int, n: int, seed: int) -> dict:
    return {"z": np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)}


@pytest.fixture(scope="module")
def int8_gan(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "generator.onnx"
    info = Q.quantize_int8(GAN / "generator.onnx", out, [_feeds(33, 64, s) for s in range(4)], fmt="qdq")
    assert info["subpixel_convtranspose"] == 2 and info["format"] == "qdq"
    return out


def test_int8_gan_is_close_to_fp32_and_has_no_fp32_conv(int8_gan):
    ops = {n.op_type for n in onnx.load(int8_gan).graph.node}
    assert "ConvTranspose" not in ops and {"QuantizeLinear", "DequantizeLinear", "DepthToSpace"} <= ops
    f = _feeds(33, 256, 99)
    a = sessions.open_session(GAN / "generator.onnx").run(None, f)[0]
    b = sessions.open_session(int8_gan).run(None, f)[0]
    diff = np.abs(a - b)
    assert 5e-4 < diff.mean() < 0.02  # int8: not the fp32 graph, yet close (measured ~0.005 on [-1, 1])
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_manifest_precision_is_checked():
    m = json.loads((GAN / "manifest.json").read_text())
    assert mf.precision(m) == "fp32"
    mf.validate({**m, "precision": "int8", "derived_from": 9})
    with pytest.raises(mf.ManifestError, match="precision must be one of"):
        mf.validate({**m, "precision": "int4"})
    with pytest.raises(mf.ManifestError, match="derived_from"):
        mf.validate({**m, "precision": "int8"})


GOOD = {"conditional_accuracy": 0.99, "frechet": 10.0, "kl_uniform": 0.01, "precision": 0.8, "recall": 0.8}


def _m(metrics, **extra):
    return {"metrics": metrics, **extra}


def _int8(metrics, src):
    return _m(metrics, precision="int8", derived_from=src)


def test_policy_keeps_variants_out_of_the_default_and_judges_them_against_their_source():
    slight = {**GOOD, "conditional_accuracy": 0.988, "frechet": 11.4}      # within 0.3 points and 15%
    d = P.decide({1: _m(GOOD), 2: _int8(slight, 1)}, P.Policy())
    assert d.default == 1 and d.states[2] == (P.READY, "") and d.variants == {"int8": 2}
    worse = {**GOOD, "conditional_accuracy": 0.985}                         # 0.5 points down
    d = P.decide({1: _m(GOOD), 2: _int8(worse, 1)}, P.Policy())
    assert d.states[2][0] == P.CANDIDATE and "conditional_accuracy" in d.states[2][1] and d.variants == {}
    far = {**GOOD, "frechet": 11.6}                                         # 16% worse
    assert P.decide({1: _m(GOOD), 2: _int8(far, 1)}, P.Policy()).states[2][0] == P.CANDIDATE
    # a newer fp32 version does not make the variant the default, and a variant never gates fp32 versions
    d = P.decide({1: _m(GOOD), 2: _int8(slight, 1), 3: _m(GOOD)}, P.Policy())
    assert d.default == 3 and d.variants == {"int8": 2}


def test_variant_of_a_retired_source_is_not_served_and_can_be_retired_itself():
    ms = {1: _m(GOOD), 2: _int8(GOOD, 1), 3: _m(GOOD)}
    d = P.decide(ms, P.Policy(retired=(1,)))
    assert d.states[2] == (P.CANDIDATE, "its fp32 source @1 is RETIRED") and d.variants == {}
    d = P.decide(ms, P.Policy(retired=(2,)))
    assert d.states[2] == (P.RETIRED, "rolled back") and d.default == 3


def _store_with_variant(tmp: Path, int8: Path, metrics: dict | None = None) -> Path:
    store = tmp / "store"
    src = store / "gan-mnist" / "9"
    src.parent.mkdir(parents=True)
    m = json.loads((GAN / "manifest.json").read_text())
    m["graphs"] = {"generator": m["graphs"]["generator"]}  # the generator alone keeps the copy small
    mf.publish(store, m, {"generator.onnx": GAN / "generator.onnx"}, version=9)
    variant = {**m, "precision": "int8", "derived_from": 9, "metrics": metrics or m["metrics"]}
    mf.publish(store, variant, {"generator.onnx": int8}, version=10)
    return store


def test_store_functions_mean_fp32_unless_asked(tmp_path, int8_gan):
    store = _store_with_variant(tmp_path, int8_gan)
    assert sessions.latest(store, "gan-mnist").name == "9"
    assert sessions.latest(store, "gan-mnist", "int8").name == "10"
    assert sessions.resolve(store, "gan-mnist").name == "9"
    assert sessions.resolve(store, "gan-mnist@int8").name == "10"
    assert sessions.resolve(store, "gan-mnist@10").name == "10"
    assert sessions.newest_valid(store, "gan-mnist")[1]["version"] == 9
    assert sessions.newest_valid(store, "gan-mnist", precision="int8")[1]["version"] == 10
    out = io.StringIO()
    store_cli.run(store, "list", ["gan-mnist"], out=out)
    assert out.getvalue().splitlines()[1:] == ["  *    9  READY", "      10  READY          (gan-mnist@int8)"]


def test_server_serves_name_at_int8_and_keeps_name_fp32(tmp_path, int8_gan):
    store = _store_with_variant(tmp_path, int8_gan)
    running = start_server(store, reload_interval_s=0)
    try:
        with grpc.insecure_channel(running.target) as ch:
            stub = pb_grpc.GeneratorServiceStub(ch)
            info = stub.GetModel(pb.GetModelRequest(model="gan-mnist@int8"))
            assert (info.version, info.precision, info.derived_from, info.is_default) == (10, "int8", 9, False)
            base = stub.GetModel(pb.GetModelRequest(model="gan-mnist"))
            assert (base.version, base.precision, base.derived_from, base.is_default) == (9, "fp32", 0, True)
            a = tensors.to_array(stub.Sample(pb.SampleRequest(model="gan-mnist", n=16, seed=3)).samples)
            b = tensors.to_array(stub.Sample(pb.SampleRequest(model="gan-mnist@int8", n=16, seed=3)).samples)
            assert a.shape == b.shape == (16, 1, 28, 28)
            assert 5e-4 < np.abs(a - b).mean() < 0.02
            with pytest.raises(grpc.RpcError) as e:
                stub.Sample(pb.SampleRequest(model="gan-mnist@fp16", n=1))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        running.app.stop(0)


def test_server_refuses_int8_when_the_variant_failed_its_gate(tmp_path, int8_gan):
    m = json.loads((GAN / "manifest.json").read_text())["metrics"]
    store = _store_with_variant(tmp_path, int8_gan, {**m, "frechet": m["frechet"] * 1.5})
    running = start_server(store, reload_interval_s=0)
    try:
        with grpc.insecure_channel(running.target) as ch:
            stub = pb_grpc.GeneratorServiceStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                stub.Sample(pb.SampleRequest(model="gan-mnist@int8", n=1))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND and "no int8 variant" in e.value.details()
            # still callable by number, as a candidate
            assert stub.GetModel(pb.GetModelRequest(model="gan-mnist@10")).state == pb.VERSION_STATE_CANDIDATE
    finally:
        shutil.rmtree(store, ignore_errors=True)
        running.app.stop(0)
