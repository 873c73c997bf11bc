"""Count the floating-point operations of an ONNX graph from its node shapes.

Only the ops that carry the arithmetic of a generator are counted, as 2 FLOPs per multiply-accumulate
(the convention of GEMM roofline numbers such as "178 GFLOP/s for a 2048^3 matmul"):

    Gemm           2 * M * N * K                        (+ M * N for a bias C)
    MatMul         2 * prod(batch dims) * M * N * K
    Conv           2 * N * C_out * prod(out spatial) * (C_in / group) * prod(kernel)   (+ output size for a bias)
    ConvTranspose  2 * N * C_in * prod(in spatial) * (C_out / group) * prod(kernel)    (+ output size for a bias)

Everything else (BatchNormalization, activations, reshapes) is element-wise or free and is listed per op
type with its output element count so a reader can see it is negligible; it is not added to the total.
Shapes come from ONNX shape inference with the batch axis fixed to a concrete size (default 1), so the
result is FLOPs per `batch` samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import shape_inference

COUNTED = ("Gemm", "MatMul", "Conv", "ConvTranspose")


@dataclass
class FlopCount:
    total: int                                               # counted FLOPs for `batch` samples
    batch: int
    by_op: dict[str, int] = field(default_factory=dict)     # counted op type -> FLOPs
    uncounted: dict[str, int] = field(default_factory=dict)  # other op type -> output elements
    params: int = 0                                          # float elements of the initializers

    @property
    def per_sample(self) -> float:
        return self.total / self.batch


def _fix_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy whose graph inputs have every symbolic (or unknown) dimension set to `batch`."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    init_names = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        for dim in inp.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                dim.Clear()
                dim.dim_value = batch
    # Drop the exporter's recorded (symbolic) intermediate and output shapes; inference fills them in again.
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    return model


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = {}
    graph = inferred.graph
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    for init in graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _need(shapes: dict[str, tuple[int, ...]], name: str, node: onnx.NodeProto) -> tuple[int, ...]:
    if name not in shapes:
        raise ValueError(f"cannot count FLOPs of {node.op_type} node {node.name or '?'}: shape of {name!r} is not "
                         "known after shape inference")
    return shapes[name]


def _node_flops(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    op = node.op_type
    if op == "Gemm":
        a, b = _need(shapes, node.input[0], node), _need(shapes, node.input[1], node)
        m, k = (a[1], a[0]) if _attr(node, "transA", 0) else a
        n = b[0] if _attr(node, "transB", 0) else b[1]
        bias = m * n if len(node.input) > 2 and node.input[2] else 0
        return 2 * m * n * k + bias
    if op == "MatMul":
        a, b = _need(shapes, node.input[0], node), _need(shapes, node.input[1], node)
        out = _need(shapes, node.output[0], node)
        k = a[-1]
        return 2 * math.prod(out) * k
    if op in ("Conv", "ConvTranspose"):
        x, w = _need(shapes, node.input[0], node), _need(shapes, node.input[1], node)
        y = _need(shapes, node.output[0], node)
        group = int(_attr(node, "group", 1))
        kernel = math.prod(w[2:])
        bias = math.prod(y) if len(node.input) > 2 and node.input[2] else 0
        if op == "Conv":
            # w: (C_out, C_in/group, *k); every output element needs C_in/group * prod(k) MACs
            return 2 * math.prod(y) * w[1] * kernel + bias
        # ConvTranspose w: (C_in, C_out/group, *k); every input element scatters into C_out/group * prod(k)
        return 2 * math.prod(x) * w[1] * kernel + bias
    raise KeyError(op)


def count(model: onnx.ModelProto | str | Path, batch: int = 1) -> FlopCount:
    """FLOPs of one run of `model` on `batch` samples (see the module docstring for the conventions)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    fixed = _fix_batch(model, batch)
    shapes = _shapes(fixed)
    result = FlopCount(total=0, batch=batch)
    for init in model.graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            result.params += math.prod(init.dims)
    for node in fixed.graph.node:
        if node.op_type in COUNTED:
            flops = _node_flops(node, shapes)
            result.total += flops
            result.by_op[node.op_type] = result.by_op.get(node.op_type, 0) + flops
        elif node.output and node.output[0] in shapes:
            result.uncounted[node.op_type] = result.uncounted.get(node.op_type, 0) + math.prod(shapes[node.output[0]])
    return result
