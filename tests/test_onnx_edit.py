"""ganserve.store.onnx_edit: the graph edits training.publish makes, each checked against the graph it changes."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ganserve.store import onnx_edit
from ganserve.store.sessions import open_session
from tests.conftest import _weights, build_generator


def _run(model: onnx.ModelProto, **feeds) -> np.ndarray:
    return open_session(model.SerializeToString()).run(None, feeds)[0]


def _z(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 8)).astype(np.float32)


def _feeds(n: int) -> dict[str, np.ndarray]:
    return {"z": _z(n)}


@pytest.mark.parametrize("distribution, prior", [
    ("uniform", lambda z: np.vectorize(math.erf)(z / math.sqrt(2))),            # U(-1, 1)
    ("uniform01", lambda z: (np.vectorize(math.erf)(z / math.sqrt(2)) + 1) / 2)])  # U(0, 1)
def test_latent_transform_feeds_the_graph_its_prior(tmp_path, distribution, prior):
    model = onnx.load(str(build_generator(tmp_path / "g.onnx", False, _weights(0))))
    wrapped = onnx_edit.latent_transform(model, "z", distribution)
    z = _z(64)
    expected = _run(model, z=prior(z.astype(np.float64)).astype(np.float32))
    np.testing.assert_allclose(_run(wrapped, z=z), expected, rtol=1e-5, atol=1e-5)
    u = prior(np.random.default_rng(1).standard_normal(200_000))  # N(0,1) through the prior is uniform
    lo, hi = (-1, 1) if distribution == "uniform" else (0, 1)
    np.testing.assert_allclose(np.histogram(u, 10, (lo, hi))[0] / 200_000, 0.1, atol=0.005)
    assert onnx_edit.latent_transform(model, "z", "normal") is model


def test_rename_io_renames_everywhere(tmp_path):
    model = onnx.load(str(build_generator(tmp_path / "g.onnx", False, _weights(0))))
    renamed = onnx_edit.rename_io(model, {"z": "latent", "x": "image"})
    assert [i.name for i in renamed.graph.input] == ["latent"] and [o.name for o in renamed.graph.output] == ["image"]
    z = _z(3)
    np.testing.assert_array_equal(_run(renamed, latent=z), _run(model, z=z))


def _mixing_generator(path) -> onnx.ModelProto:
    """z (1, 8) -> x = z - mean over the batch axis: each row depends on the others (a batch-norm in train mode)."""
    nodes = [helper.make_node("ReduceMean", ["z"], ["m"], axes=[0], keepdims=1),
             helper.make_node("Sub", ["z", "m"], ["x"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_dynamic_batch_accepts_only_a_graph_whose_rows_stay_independent(tmp_path):
    model = onnx.load(str(build_generator(tmp_path / "g.onnx", False, _weights(0))))
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for vi in [*fixed.graph.input, *fixed.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    next(t for t in fixed.graph.initializer if t.name == "shape").CopyFrom(
        numpy_helper.from_array(np.array([1, 1, 8, 8], np.int64), "shape"))  # the batch baked in, as torch does
    assert onnx_edit.fixed_batch(fixed) == {"z": 1, "x": 1} and not onnx_edit.runs_batched(fixed, _feeds)
    dynamic = onnx_edit.dynamic_batch(fixed, _feeds)
    assert onnx_edit.fixed_batch(dynamic) == {} and onnx_edit.runs_batched(dynamic, _feeds)
    np.testing.assert_allclose(_run(dynamic, z=_z(5)), _run(model, z=_z(5)), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="row i of a batch differs"):
        onnx_edit.dynamic_batch(_mixing_generator(tmp_path), _feeds)
