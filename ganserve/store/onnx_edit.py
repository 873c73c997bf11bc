"""Edits that make a foreign ONNX generator servable, each checked by running the graph (onnx + numpy only).

- rename_io: the graph's inputs/outputs renamed to the store's names (z, y, x), so every tool (the gradient-
  graph builder, the evaluator, inversion) finds them;
- dynamic_batch: a batch axis exported as a constant (torch.onnx.export without dynamic_axes) made symbolic,
  including Reshape targets that repeat the constant; accepted only if each row of a batch of 5 equals the
  graph run on that row alone at the exported size (samples stay independent), else refused;
- latent_transform: a generator trained on uniform latents gets z -> erf(z / sqrt 2) in front (the server
  draws z ~ N(0, 1), protos/latents.py; erf(z / sqrt 2) of a standard normal is uniform on (-1, 1)).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ganserve.store.sessions import open_session

LATENT_DISTRIBUTIONS = ("normal", "uniform", "uniform01")  # N(0,1), U(-1,1), U(0,1)


def _inputs(model: onnx.ModelProto) -> list:
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def rename_io(model: onnx.ModelProto, names: dict[str, str]) -> onnx.ModelProto:
    """A copy with graph inputs/outputs renamed {old: new} everywhere they are used."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for vi in [*g.input, *g.output, *g.value_info]:
        vi.name = names.get(vi.name, vi.name)
    for node in g.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    return out


def fixed_batch(model: onnx.ModelProto) -> dict[str, int]:
    """{input or output name: its constant batch size} for every graph input/output whose first axis is fixed."""
    found = {}
    for vi in [*_inputs(model), *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            found[vi.name] = dims[0].dim_value
    return found


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = open_session(model.SerializeToString(), log_severity=4)  # a failing run is an answer here
    return session.run(None, feeds)


def runs_batched(model: onnx.ModelProto, feeds_for) -> bool:
    """Whether the graph runs on a batch of 2 and of 5."""
    try:
        return all(len(_run(model, feeds_for(n))[0]) == n for n in (2, 5))
    except Exception:  # noqa: BLE001 - onnxruntime raises its own types
        return False


def dynamic_batch(model: onnx.ModelProto, feeds_for) -> onnx.ModelProto:
    """A copy whose batch axis is dynamic; ValueError with the reason when the graph cannot be made so.

    `feeds_for(n)` -> probe inputs with n rows. The declared batch axis becomes symbolic, and Reshape targets
    whose first entry equals the exported batch (1 when none is declared) become 0 ("copy the input's batch
    axis"): the usual constant-folded `x.view(x.size(0), ...)` of an export without dynamic_axes.
    """
    fixed = fixed_batch(model)
    batch = next(iter(fixed.values()), 1)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in [*_inputs(out), *out.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"
    del out.graph.value_info[:]  # intermediate shapes inferred at the exported batch size
    weights = {t.name: t for t in out.graph.initializer}
    weights.update({n.output[0]: a.t for n in out.graph.node if n.op_type == "Constant"  # (the old exporter's)
                    for a in n.attribute if a.name == "value"})
    for node in out.graph.node:
        target = weights.get(node.input[1]) if node.op_type == "Reshape" and len(node.input) > 1 else None
        if target is not None:
            shape = numpy_helper.to_array(target).copy()
            if shape.ndim == 1 and len(shape) > 1 and shape[0] == batch:
                shape[0] = 0
                target.CopyFrom(numpy_helper.from_array(shape, target.name or None))
    try:
        rows = feeds_for(5)
        got = _run(out, rows)
        singles = [_run(model, {k: np.repeat(v[i:i + 1], batch, 0) for k, v in rows.items()}) for i in range(5)]
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types; the reason is what matters
        raise ValueError(f"cannot make the batch axis dynamic ({str(e).splitlines()[0][:200]})") from e
    for i, single in enumerate(singles):
        for a, b in zip(got, single):
            if a.shape[0] != 5 or not np.allclose(a[i], b[0], rtol=1e-4, atol=1e-5):
                raise ValueError("with the batch axis made dynamic, row i of a batch differs from the graph run on "
                                 "row i alone (the graph mixes samples or fixes the batch elsewhere)")
    return out


def latent_transform(model: onnx.ModelProto, z_name: str, distribution: str) -> onnx.ModelProto:
    """A copy that takes z ~ N(0, 1) and feeds the graph the `distribution` it was trained on."""
    if distribution not in LATENT_DISTRIBUTIONS:
        raise ValueError(f"latent distribution must be one of {LATENT_DISTRIBUTIONS}, got {distribution!r}")
    if distribution == "normal":
        return model
    inner = f"{z_name}__trained"
    out = rename_io(model, {})
    for node in out.graph.node:
        node.input[:] = [inner if n == z_name else n for n in node.input]
    consts = {f"{z_name}__rsqrt2": np.array(1 / math.sqrt(2), np.float32)}
    nodes = [helper.make_node("Mul", [z_name, f"{z_name}__rsqrt2"], [f"{z_name}__s"]),
             helper.make_node("Erf", [f"{z_name}__s"], [inner if distribution == "uniform" else f"{z_name}__u"])]
    if distribution == "uniform01":  # (erf + 1) / 2
        consts[f"{z_name}__half"] = np.array(0.5, np.float32)
        nodes += [helper.make_node("Mul", [f"{z_name}__u", f"{z_name}__half"], [f"{z_name}__h"]),
                  helper.make_node("Add", [f"{z_name}__h", f"{z_name}__half"], [inner])]
    out.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    new_nodes = [*nodes, *out.graph.node]
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    return out
