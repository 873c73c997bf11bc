"""Every way a version can fail to load marks that version UNAVAILABLE with its reason, and only that version:
start-up succeeds with what is valid, clients hear the reason (NOT_FOUND), hot reload goes on for every model.

The bad generators are the tiny test generator (tests/conftest.py) changed one way each: a batch axis fixed
in the declared shapes or inside the graph, NaN outputs, outputs outside the declared value range, and the
store faults of tests/test_server_reliability.py (checksum, truncated file, wrong names/dims, missing file,
broken JSON)."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from ganserve.store import manifest as mf
from tests.conftest import _weights, build_generator, publish_gan, publish_points, start_server
from tests.test_server_reliability import _corrupt_copy, _wait


def _bad_generator(path: Path, how: str) -> Path:
    """The tiny generator (z (N,8) -> x (N,1,8,8)) broken one way."""
    build_generator(path, False, _weights(0))
    model = onnx.load(str(path))
    g = model.graph
    if how == "fixed-batch":  # what torch.onnx.export writes without dynamic_axes
        for vi in [*g.input, *g.output]:
            vi.type.tensor_type.shape.dim[0].dim_value = 1
    elif how == "fixed-batch-inside":  # a dynamic input, but the graph reshapes to a batch of 1
        shape = next(t for t in g.initializer if t.name == "shape")
        shape.CopyFrom(numpy_helper.from_array(np.array([1, 1, 8, 8], np.int64), "shape"))
    elif how in ("nan", "range"):
        factor = np.float32("nan") if how == "nan" else np.float32(3.0)
        g.node[-1].output[0] = "x_pre"
        g.node.append(helper.make_node("Mul", ["x_pre", "k"], ["x"]))
        g.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "k"))
    onnx.save(model, str(path))
    return path


ONNX_FAULTS = {"fixed-batch": "fixed batch size 1", "fixed-batch-inside": "fails on a probe batch of 2",
               "nan": "non-finite value(s)", "range": "outside the declared output.value_range [-1.0, 1.0]"}
STORE_FAULTS = {"checksum": "sha256", "truncated": "ONNX Runtime cannot load it", "missing": "missing file critic.onnx",
                "manifest": "manifest.json: not valid JSON", "inputs": "inputs ['latent'] != the ONNX graph's inputs",
                "outputs": "manifest dims [1, 9, 9]"}


def _publish_bad(store: Path, tmp: Path, how: str, version: int) -> None:
    """tiny-gan@<version> broken as `how` (all copies of version 1, which must exist)."""
    if how in STORE_FAULTS:
        _corrupt_copy(store, version, how)
        return
    src = store / "tiny-gan" / "1"
    m = mf.read_manifest(src)
    files = {f: src / f for f in m["files"]}
    files["generator.onnx"] = _bad_generator(tmp / f"bad-{how}.onnx", how)
    mf.publish(store, m, files, version=version)


def _stub(target):
    channel = grpc.insecure_channel(target)
    return channel, pb_grpc.GeneratorServiceStub(channel)


def _not_found(stub, ref: str) -> str:
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModel(pb.GetModelRequest(model=ref))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    return err.value.details()


def test_a_store_with_one_broken_version_of_each_kind_starts_and_says_why(tmp_path):
    store, build = tmp_path / "store", tmp_path / "build"
    publish_gan(store, build)
    publish_points(store, build)
    kinds = sorted({**ONNX_FAULTS, **STORE_FAULTS})
    for version, how in enumerate(kinds, start=2):
        _publish_bad(store, build, how, version)
    running = start_server(store, reload_interval_s=0.1, metrics_port=-1)
    channel, stub = _stub(running.target)
    try:
        info = stub.GetModel(pb.GetModelRequest(model="tiny-gan"))
        assert info.version == 1 and list(info.available_versions) == [1]
        assert stub.Sample(pb.SampleRequest(model="tiny-gan", n=3, seed=1)).model == "tiny-gan@1"
        index = {m.version: m for m in stub.ListModels(pb.ListModelsRequest(index=True)).models
                 if m.name == "tiny-gan"}
        for version, how in enumerate(kinds, start=2):
            details = _not_found(stub, f"tiny-gan@{version}")
            assert f"tiny-gan@{version} is UNAVAILABLE: " in details and {**ONNX_FAULTS, **STORE_FAULTS}[how] in details
            assert index[version].state == pb.VERSION_STATE_UNAVAILABLE
            assert {**ONNX_FAULTS, **STORE_FAULTS}[how] in index[version].state_reason
        assert index[1].state == pb.VERSION_STATE_READY and index[1].is_default and index[1].resident
        # hot reload goes on for the other model and for this one
        publish_points(store, build / "p2")
        _wait(lambda: stub.GetModel(pb.GetModelRequest(model="tiny-points")).version == 2, what="tiny-points@2")
        publish_gan(store, build / "g2", seed=1)
        _wait(lambda: stub.GetModel(pb.GetModelRequest(model="tiny-gan")).version == len(kinds) + 2,
              what="the next good tiny-gan")
    finally:
        channel.close()
        running.app.stop(0)


@pytest.mark.parametrize("how", sorted(ONNX_FAULTS))
def test_a_bad_generator_published_while_serving_is_unavailable_and_reload_goes_on(tmp_path, how):
    store, build = tmp_path / "store", tmp_path / "build"
    publish_gan(store, build)
    publish_points(store, build)
    running = start_server(store, reload_interval_s=0.1, metrics_port=-1)
    channel, stub = _stub(running.target)
    try:
        before = stub.Sample(pb.SampleRequest(model="tiny-gan", n=2, seed=1))
        _publish_bad(store, build, how, 2)
        _wait(lambda: "UNAVAILABLE" in _not_found(stub, "tiny-gan@2"), what="tiny-gan@2 marked unavailable")
        assert ONNX_FAULTS[how] in _not_found(stub, "tiny-gan@2")
        after = stub.Sample(pb.SampleRequest(model="tiny-gan", n=2, seed=1))
        assert after.model == "tiny-gan@1" and after.samples == before.samples
        publish_points(store, build / "p2")  # another model's new version still loads
        _wait(lambda: stub.GetModel(pb.GetModelRequest(model="tiny-points")).version == 2, what="tiny-points@2")
        publish_gan(store, build / "g3", seed=1)  # and this model's next good one
        _wait(lambda: stub.GetModel(pb.GetModelRequest(model="tiny-gan")).version == 3, what="tiny-gan@3")
    finally:
        channel.close()
        running.app.stop(0)


def test_a_model_with_no_servable_version_says_why(tmp_path):
    store, build = tmp_path / "store", tmp_path / "build"
    publish_gan(store, build)
    _publish_bad(store, build, "nan", 2)
    shutil.rmtree(store / "tiny-gan" / "1")
    running = start_server(store, reload_interval_s=0, metrics_port=-1)
    channel, stub = _stub(running.target)
    try:
        details = _not_found(stub, "tiny-gan")
        assert "no version of 'tiny-gan' can be served: @2 UNAVAILABLE: " in details and "non-finite" in details
    finally:
        channel.close()
        running.app.stop(0)


def test_a_broken_old_version_is_found_before_anyone_calls_it(tmp_path):
    """Outside the warm set a version loads on first use; --check-cold-versions (default) load-checks it in the
    background first, so the index says it is broken before a client finds out."""
    store, build = tmp_path / "store", tmp_path / "build"
    publish_gan(store, build)
    _publish_bad(store, build, "nan", 2)
    publish_gan(store, build / "g3", seed=1)  # @3 is the default; @2 is cold
    for check, want in ((False, pb.VERSION_STATE_READY), (True, pb.VERSION_STATE_UNAVAILABLE)):
        running = start_server(store, reload_interval_s=0, metrics_port=-1, check_cold_versions=check)
        channel, stub = _stub(running.target)
        try:
            state = lambda: next(m.state for m in stub.ListModels(pb.ListModelsRequest(index=True)).models  # noqa: E731
                                 if m.version == 2)
            if check:
                _wait(lambda: state() == want, what="@2 checked in the background")
            assert state() == want and stub.GetModel(pb.GetModelRequest(model="tiny-gan")).version == 3
            if check:
                assert "non-finite" in _not_found(stub, "tiny-gan@2")
        finally:
            channel.close()
            running.app.stop(0)
