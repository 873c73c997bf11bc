"""Tensor message <-> numpy array (row-major, little-endian), with the checks a server needs.

`to_array` never trusts its input: it checks the dtype, that the shape is non-negative and that the byte
length matches, and raises `TensorError` (a ValueError naming the field) otherwise.
"""

from __future__ import annotations

import numpy as np

from protos.ganserve.v1 import generator_pb2 as pb

_NUMPY = {pb.FLOAT32: np.dtype("<f4"), pb.UINT8: np.dtype("u1"), pb.INT64: np.dtype("<i8")}
_PROTO = {np.dtype("float32"): pb.FLOAT32, np.dtype("uint8"): pb.UINT8, np.dtype("int64"): pb.INT64}


class TensorError(ValueError):
    """A Tensor message that cannot be decoded; `field` names the offending request field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def from_array(array: np.ndarray) -> pb.Tensor:
    """Encode a float32, uint8 or int64 array (other floats are cast to float32, other ints to int64)."""
    array = np.asarray(array)
    if array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)
    elif array.dtype.kind in "iu" and array.dtype not in (np.uint8, np.int64):
        array = array.astype(np.int64)
    elif array.dtype.kind == "b":
        array = array.astype(np.uint8)
    dtype = _PROTO.get(array.dtype)
    if dtype is None:
        raise TypeError(f"cannot encode dtype {array.dtype}")
    data = np.ascontiguousarray(array, dtype=_NUMPY[dtype]).tobytes()
    return pb.Tensor(shape=list(array.shape), dtype=dtype, data=data)


def to_array(tensor: pb.Tensor, field: str = "tensor", *, max_elements: int | None = None) -> np.ndarray:
    """Decode a Tensor into a (read-only view of a) numpy array, validating it."""
    if tensor.dtype not in _NUMPY:
        name = pb.DType.Name(tensor.dtype) if tensor.dtype in pb.DType.values() else str(tensor.dtype)
        raise TensorError(f"{field}.dtype", f"must be FLOAT32, UINT8 or INT64, got {name}")
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"{field}.shape", f"dimensions must be non-negative, got {list(shape)}")
    count = int(np.prod(shape, dtype=np.float64)) if shape else 1
    if max_elements is not None and count > max_elements:
        raise TensorError(f"{field}.shape", f"{count} elements exceed the limit of {max_elements}")
    dtype = _NUMPY[tensor.dtype]
    if len(tensor.data) != count * dtype.itemsize:
        raise TensorError(f"{field}.data", f"has {len(tensor.data)} bytes, shape {list(shape)} of "
                          f"{pb.DType.Name(tensor.dtype)} needs {count * dtype.itemsize}")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)


def is_set(tensor: pb.Tensor) -> bool:
    """True if the message field was filled in (any of shape, dtype or data)."""
    return bool(tensor.shape) or tensor.dtype != pb.DTYPE_UNSPECIFIED or bool(tensor.data)
