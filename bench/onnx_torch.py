"""Run an ONNX generator graph with torch: the same ops on the same weights, node by node, so "torch eager"
and "torch.compile" in the benchmark are measured on exactly the model ONNX Runtime serves (whatever
training class produced it). Outputs are checked against ONNX Runtime before timing (bench/inprocess.py).

Covers the ops generator graphs exported by torch.onnx use (dense, (transposed) convolutions, batch norm,
activations, reshapes and their shape arithmetic). An op outside the table raises NotImplementedError
naming it, and the benchmark reports torch as not measured for that model, with the reason.

Integer tensors (shape arithmetic: Shape -> Gather -> Unsqueeze -> Concat -> Reshape) are kept as Python
ints and lists, not tensors, so torch.compile traces them as static or symbolic sizes instead of breaking
the graph on data-dependent values.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(v) -> list[int] | int:
    """An int64 value (tensor, array or list) as Python int(s)."""
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    elif isinstance(v, np.ndarray):
        v = v.tolist()
    return v


def _sym_pads(pads: list[int], op: str) -> list[int]:
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        raise NotImplementedError(f"{op} with asymmetric pads {pads}")
    return pads[:half]


def _conv(x, w, b, a, transpose: bool):
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError(f"{'ConvTranspose' if transpose else 'Conv'} with auto_pad")
    nd = w.dim() - 2
    strides = a.get("strides", [1] * nd)
    dil = a.get("dilations", [1] * nd)
    pads = _sym_pads(a.get("pads", [0] * 2 * nd), "Conv")
    group = a.get("group", 1)
    fn = {(1, False): F.conv1d, (2, False): F.conv2d, (3, False): F.conv3d,
          (1, True): F.conv_transpose1d, (2, True): F.conv_transpose2d, (3, True): F.conv_transpose3d}[(nd, transpose)]
    if transpose:
        if "output_shape" in a:
            raise NotImplementedError("ConvTranspose with output_shape")
        return fn(x, w, b, strides, pads, a.get("output_padding", [0] * nd), group, dil)
    return fn(x, w, b, strides, pads, dil, group)


def _gemm(a_, b_, c, a):
    if a.get("transA", 0):
        a_ = a_.t()
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if a.get("transB", 0) and alpha == 1.0 and beta == 1.0:
        return F.linear(a_, b_, c)
    y = alpha * (a_ @ (b_.t() if a.get("transB", 0) else b_))
    return y if c is None else y + beta * c


def _gather(data, idx, a):
    i = _ints(idx)
    if isinstance(data, list):  # shape arithmetic
        return data[i] if isinstance(i, int) else [data[j] for j in i]
    axis = a.get("axis", 0)
    if isinstance(i, int):
        return data.select(axis, i)
    return torch.index_select(data, axis, torch.tensor(i))


def _unsqueeze(x, axes):
    if not isinstance(x, torch.Tensor):
        return [x] if not isinstance(x, list) else x  # a scalar size becomes a 1-element shape list
    for ax in sorted(_ints(axes)):
        x = x.unsqueeze(ax)
    return x


def _reshape(x, shape, a):
    shape = list(_ints(shape))
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _concat(xs, a):
    if all(not isinstance(x, torch.Tensor) for x in xs):
        out = []
        for x in xs:
            out.extend(x if isinstance(x, list) else [x])
        return out
    return torch.cat(xs, a["axis"])


def _arith(op):
    def f(x, y):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            return op(x, y)
        xs, ys = (x if isinstance(x, list) else [x]), (y if isinstance(y, list) else [y])
        n = max(len(xs), len(ys))
        out = [op(xs[i % len(xs)], ys[i % len(ys)]) for i in range(n)]
        return out if isinstance(x, list) or isinstance(y, list) else out[0]
    return f


def _slice(i):
    """ONNX Slice with constant starts/ends[/axes/steps] (Python ints after constant folding)."""
    x, starts, ends = i[0], _ints(i[1]), _ints(i[2])
    starts, ends = (v if isinstance(v, list) else [v] for v in (starts, ends))
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
    steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    axes, steps = (v if isinstance(v, list) else [v] for v in (axes, steps))
    if not isinstance(x, torch.Tensor):  # a shape list
        return x[slice(starts[0], ends[0], steps[0])]
    idx = [slice(None)] * x.dim()
    for ax, st, en, sp in zip(axes, starts, ends, steps):
        idx[ax % x.dim()] = slice(st, en, sp)
    return x[tuple(idx)]


# op -> f(inputs, attrs); inputs are tensors, Python ints/lists for int64 values, or None for empty names
OPS = {
    "Identity": lambda i, a: i[0],
    "MatMul": lambda i, a: i[0] @ i[1],
    "Gemm": lambda i, a: _gemm(i[0], i[1], i[2] if len(i) > 2 else None, a),
    "Add": lambda i, a: _arith(lambda x, y: x + y)(i[0], i[1]),
    "Sub": lambda i, a: _arith(lambda x, y: x - y)(i[0], i[1]),
    "Mul": lambda i, a: _arith(lambda x, y: x * y)(i[0], i[1]),
    "Div": lambda i, a: _arith(lambda x, y: x / y if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor)
                               else x // y)(i[0], i[1]),
    "Neg": lambda i, a: -i[0],
    "Exp": lambda i, a: torch.exp(i[0]),
    "Log": lambda i, a: torch.log(i[0]),
    "Sqrt": lambda i, a: torch.sqrt(i[0]),
    "Pow": lambda i, a: torch.pow(i[0], i[1]),
    "Relu": lambda i, a: F.relu(i[0]),
    "LeakyRelu": lambda i, a: F.leaky_relu(i[0], a.get("alpha", 0.01)),
    "Tanh": lambda i, a: torch.tanh(i[0]),
    "Sigmoid": lambda i, a: torch.sigmoid(i[0]),
    "Softplus": lambda i, a: F.softplus(i[0]),
    "Softmax": lambda i, a: torch.softmax(i[0], a.get("axis", -1)),
    "Clip": lambda i, a: torch.clamp(i[0], *(None if len(i) <= k or i[k] is None else float(i[k]) for k in (1, 2))),
    "BatchNormalization": lambda i, a: F.batch_norm(i[0], i[3], i[4], i[1], i[2], False, 0.0, a.get("epsilon", 1e-5)),
    "Conv": lambda i, a: _conv(i[0], i[1], i[2] if len(i) > 2 else None, a, False),
    "ConvTranspose": lambda i, a: _conv(i[0], i[1], i[2] if len(i) > 2 else None, a, True),
    "Reshape": lambda i, a: _reshape(i[0], i[1], a),
    "Flatten": lambda i, a: i[0].flatten(a.get("axis", 1)) if a.get("axis", 1) > 0 else i[0].reshape(1, -1),
    "Transpose": lambda i, a: i[0].permute(a["perm"]) if "perm" in a else i[0].permute(*reversed(range(i[0].dim()))),
    "Shape": lambda i, a: list(i[0].shape)[a.get("start", 0):a.get("end", None)],
    "Gather": lambda i, a: _gather(i[0], i[1], a),
    "Unsqueeze": lambda i, a: _unsqueeze(i[0], i[1] if len(i) > 1 else a["axes"]),
    "Squeeze": lambda i, a: i[0].squeeze() if len(i) < 2 else i[0].squeeze(tuple(_ints(i[1]))),
    "Concat": lambda i, a: _concat(i, a),
    "Slice": lambda i, a: _slice(i),
    "Greater": lambda i, a: i[0] > i[1],
    "Less": lambda i, a: i[0] < i[1],
    "Equal": lambda i, a: i[0] == i[1],
    "Cast": lambda i, a: i[0] if not isinstance(i[0], torch.Tensor) else i[0].to(
        {1: torch.float32, 7: torch.int64, 9: torch.bool, 11: torch.float64}[a["to"]]),
}


class OnnxModule(torch.nn.Module):
    """torch.nn.Module running an ONNX graph node by node (float32 weights as buffers)."""

    def __init__(self, model: onnx.ModelProto | str):
        super().__init__()
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model))
        graph = model.graph
        missing = sorted({n.op_type for n in graph.node if n.op_type not in OPS and n.op_type != "Constant"})
        if missing:
            raise NotImplementedError(f"ONNX ops not supported by the torch runner: {', '.join(missing)}")
        self._consts: dict[str, object] = {}
        self._buffers_by_name: dict[str, str] = {}
        for k, init in enumerate(graph.initializer):
            self._add_const(init.name, numpy_helper.to_array(init), f"w{k}")
        self._nodes = []
        for k, node in enumerate(graph.node):
            if node.op_type == "Constant":
                self._add_const(node.output[0], numpy_helper.to_array(_attrs(node)["value"]), f"c{k}")
                continue
            self._nodes.append((OPS[node.op_type], list(node.input), list(node.output), _attrs(node)))
        init_names = {i.name for i in graph.initializer}
        self.inputs = [i.name for i in graph.input if i.name not in init_names]
        self.outputs = [o.name for o in graph.output]

    def _add_const(self, name: str, array: np.ndarray, attr: str) -> None:
        if array.dtype.kind in "iub":
            self._consts[name] = array.tolist()   # shape arithmetic: Python ints
        else:
            self.register_buffer(attr, torch.from_numpy(np.array(array, dtype=np.float32)))
            self._buffers_by_name[name] = attr

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        env: dict[str, object] = dict(zip(self.inputs, args))
        env.update(self._consts)
        for name, attr in self._buffers_by_name.items():
            env[name] = getattr(self, attr)
        for fn, ins, outs, a in self._nodes:
            env[outs[0]] = fn([env[n] if n else None for n in ins], a)
        return env[self.outputs[0]]
