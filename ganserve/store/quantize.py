"""Reduced-precision variants of a generator graph: int8 by ONNX Runtime static quantization.

Why a graph rewrite comes first: ONNX Runtime's CPU provider has no int8 ConvTranspose kernel, so a DCGAN's
transposed convolutions (half of its arithmetic) stay fp32 between a dequantize and a quantize, and the int8
graph measures no faster than fp32 (docs/precision.md). `subpixel_convtranspose` replaces each
ConvTranspose(kernel 4, stride 2, pad 1) by the exact equivalent Conv(kernel 2, pad 1) with 4x the output
channels, DepthToSpace(2) and a one-pixel crop (the "sub-pixel" form of a stride-2 transposed convolution);
a Conv has int8 kernels (VNNI/AMX through MLAS). Then `quantize_static` with per-channel int8 weights and
uint8 activations calibrated on the model's own latent prior.

Precision words (ganserve.store.manifest.PRECISIONS): "fp32" (the trained graph) and "int8". bf16/fp16 are not offered: ONNX Runtime's CPU
provider has no bf16 or fp16 Conv/ConvTranspose kernel on x86, so such a graph runs as casts around fp32.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from ganserve.store.sessions import write_optimized

FORMATS = {"qoperator": QuantFormat.QOperator, "qdq": QuantFormat.QDQ}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _is_stride2_k4(node: onnx.NodeProto) -> bool:
    a = _attrs(node)
    return (node.op_type == "ConvTranspose" and list(a.get("kernel_shape", [])) == [4, 4]
            and list(a.get("strides", [])) == [2, 2] and list(a.get("pads", [])) == [1, 1, 1, 1]
            and a.get("group", 1) == 1 and list(a.get("dilations", [1, 1])) == [1, 1]
            and not any(a.get("output_padding", [])) and "output_shape" not in a
            and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def subpixel_weight(w: np.ndarray) -> np.ndarray:
    """ConvTranspose weight (Cin, Cout, 4, 4) -> Conv weight (4*Cout, Cin, 2, 2), channel c*4 + 2*sh + sw.

    The transposed convolution (stride 2, pad 1) writes output row o = 2i from input rows i (kernel row 1) and
    i-1 (kernel row 3), and o = 2i+1 from rows i+1 (kernel row 0) and i (kernel row 2). A kernel-2 Conv with pad 1 at position p reads rows p-1 (tap 0) and p (tap 1). Sub-pixel
    slot s of position p is output row 2p + s - 1: slot 0 is o = 2(p-1)+1 (taps read kernel rows 2, 0), slot 1
    is o = 2p (kernel rows 3, 1); so tap t of slot s uses kernel row (2 + s) if t == 0 else s. Columns alike.
    """
    cin, cout = w.shape[:2]
    k = np.empty((cout, 2, 2, cin, 2, 2), np.float32)
    row = {(s, t): (2 + s if t == 0 else s) for s in (0, 1) for t in (0, 1)}
    for sh in (0, 1):
        for sw in (0, 1):
            for th in (0, 1):
                for tw in (0, 1):
                    k[:, sh, sw, :, th, tw] = w[:, :, row[sh, th], row[sw, tw]].T
    return k.reshape(cout * 4, cin, 2, 2)


def subpixel_convtranspose(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The model with every ConvTranspose(k4, s2, p1) rewritten as Conv + DepthToSpace + crop (exact up to
    float rounding); (model, number rewritten). Other ConvTransposes are left as they are."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes, done = [], 0
    for n in g.node:
        if not _is_stride2_k4(n) or n.input[1] not in inits:
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        base = (n.name or f"convt{done}").replace("/", "_")
        wname = f"{base}.subpixel_w"
        g.initializer.append(numpy_helper.from_array(subpixel_weight(w), wname))
        ins = [n.input[0], wname]
        if len(n.input) > 2 and n.input[2]:
            b = numpy_helper.to_array(inits[n.input[2]]).astype(np.float32)
            ins.append(f"{base}.subpixel_b")
            g.initializer.append(numpy_helper.from_array(np.repeat(b, 4), ins[-1]))
        for suffix, values in (("starts", [1, 1]), ("ends", [-1, -1]), ("axes", [2, 3])):
            g.initializer.append(numpy_helper.from_array(np.array(values, np.int64), f"{base}.crop_{suffix}"))
        conv, d2s = f"{base}.subpixel", f"{base}.d2s"
        nodes += [helper.make_node("Conv", ins, [conv], name=conv, kernel_shape=[2, 2], pads=[1, 1, 1, 1]),
                  helper.make_node("DepthToSpace", [conv], [d2s], name=d2s, blocksize=2, mode="CRD"),
                  helper.make_node("Slice", [d2s, f"{base}.crop_starts", f"{base}.crop_ends", f"{base}.crop_axes"],
                                   list(n.output), name=f"{base}.crop")]
        done += 1
    del g.node[:]
    g.node.extend(nodes)
    return model, done


class _Feeds(CalibrationDataReader):
    def __init__(self, batches: Iterable[dict[str, np.ndarray]]):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)


def quantize_int8(src: Path, dst: Path, calibration: Iterable[dict[str, np.ndarray]], *,
                  fmt: str = "qoperator", subpixel: bool = True, exclude: tuple[str, ...] = ()) -> dict:
    """Write an int8 version of the generator `src` to `dst`; returns what was done (for the manifest).

    `calibration`: feeds of the graph's inputs drawn from the model's own prior (latents, class labels).
    `exclude`: op types kept fp32. Steps: 1. fold BatchNorm and constants; 2. the sub-pixel rewrite;
    3. static quantization, per-channel int8 weights, uint8 activations (MinMax calibration)."""
    with tempfile.TemporaryDirectory(prefix="ganserve-q-") as tmp:
        folded = Path(tmp) / "folded.onnx"
        write_optimized(Path(src), folded)
        model, rewritten = subpixel_convtranspose(onnx.load(folded)) if subpixel else (onnx.load(folded), 0)
        onnx.save(model, folded)
        ready = Path(tmp) / "ready.onnx"
        write_optimized(folded, ready)
        ops = [op for op in ("Conv", "MatMul", "Gemm", "ConvTranspose") if op not in exclude]
        quantize_static(str(ready), str(dst), _Feeds(calibration), quant_format=FORMATS[fmt],
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=ops)
    return {"method": "onnxruntime.quantization.quantize_static", "format": fmt, "weights": "int8 per channel",
            "activations": "uint8 per tensor (MinMax)", "subpixel_convtranspose": rewritten,
            "quantized_ops": _int8_ops(onnx.load(dst))}


def _int8_ops(model: onnx.ModelProto) -> list[str]:
    """Op types that run on int8 data: QLinear* (QOperator) or ops fed by DequantizeLinear (QDQ, fused at load)."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sorted({n.op_type for n in model.graph.node if n.op_type.startswith("QLinear") or n.op_type == "QGemm"
                   or (n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq for i in n.input)
                       and n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"))})
