"""Request checks: every field a client sends is checked here before any work, and every failure names the
field and the reason (INVALID_ARGUMENT, or FAILED_PRECONDITION when the model cannot do what is asked).

Each function takes proto fields and returns plain numpy/python values for the functions in server/engine.py.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

import numpy as np

from ganserve.conditions import SOFT_LABEL_TOLERANCE, one_hot
from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from server.errors import FailedPrecondition, InvalidArgument, require
from server.registry import LoadedModel

MIN_TRUNCATION = 0.25  # below this the redraw loop of protos.latents needs thousands of rounds
RANGE_TOLERANCE = 1e-3  # image values may exceed the documented range by float rounding, not more
# Explicit latents beyond this (in absolute value) are refused: a prior draw is within ~6 of 0, and latents of
# 1e37 and more overflow float32 inside a generator (NaN images). Config.max_latent_abs overrides it.
MAX_LATENT_ABS = 1e4


def seed(has_seed: bool, value: int) -> int:
    """The request's seed, or a fresh random one the reply returns (so the call can be repeated)."""
    return int(value) if has_seed else secrets.randbits(63)


def count(n: int, limit: int, field: str = "n") -> int:
    require(n >= 1, field, f"must be at least 1, got {n}")
    require(n <= limit, field, f"must be at most {limit} (the server's limit), got {n}")
    return int(n)


def truncation(value: float, field: str = "truncation") -> float:
    require(math.isfinite(value), field, f"must be finite, got {value}")
    require(value == 0 or value >= MIN_TRUNCATION, field,
            f"must be 0 (off) or at least {MIN_TRUNCATION}, got {value:g}")
    return float(value)


def finite_float(value: float, field: str, *, minimum: float = 0.0) -> float:
    require(math.isfinite(value), field, f"must be finite, got {value}")
    require(value >= minimum, field, f"must be >= {minimum:g}, got {value:g}")
    return float(value)


_ENCODINGS = frozenset(pb.Encoding.values())


def encoding(model: LoadedModel, value: int, field: str = "encoding") -> int:
    require(value in _ENCODINGS, field, f"unknown encoding {value}")
    if value in (pb.ENCODING_UINT8, pb.ENCODING_PNG):
        require(model.data_kind == "image" and model.value_range is not None, field,
                f"{pb.Encoding.Name(value)} is for image models; {model.ref} outputs points, use ENCODING_FLOAT32")
    return pb.ENCODING_FLOAT32 if value == pb.ENCODING_UNSPECIFIED else value


def tensor(msg: pb.Tensor, field: str, *, max_elements: int) -> np.ndarray:
    try:
        return tensors.to_array(msg, field, max_elements=max_elements)
    except tensors.TensorError as e:
        raise InvalidArgument(e.reason, e.field) from None


def float_tensor(msg: pb.Tensor, field: str, *, max_elements: int) -> np.ndarray:
    array = tensor(msg, field, max_elements=max_elements)
    require(array.dtype == np.float32, f"{field}.dtype", f"must be FLOAT32, got {pb.DType.Name(msg.dtype)}")
    require(bool(np.isfinite(array).all()), f"{field}.data", "must be finite (no NaN or Inf)")
    return array


def bounded(z: np.ndarray, field: str, bound: float) -> np.ndarray:
    """`z` (finite already) when every |entry| <= bound; else INVALID_ARGUMENT naming `field`.data."""
    worst = float(np.abs(z).max()) if z.size else 0.0
    require(worst <= bound, f"{field}.data",
            f"latent entries must be within +-{bound:g} (the server's max_latent_abs; prior draws are within ~6), "
            f"got {worst:g}")
    return z


def latents(msg: pb.Tensor, model: LoadedModel, limit: int, field: str = "latents", *,
            bound: float = MAX_LATENT_ABS) -> np.ndarray:
    z = float_tensor(msg, field, max_elements=limit * max(model.latent_dim, 1))
    require(z.ndim == 2 and z.shape[1] == model.latent_dim, f"{field}.shape",
            f"must be [n, {model.latent_dim}], got {list(z.shape)}")
    count(len(z), limit, f"{field}.shape[0]")
    return np.ascontiguousarray(bounded(z, field, bound))


def labels(model: LoadedModel, hard: Sequence[int], soft: pb.Tensor, n: int, *, prefix: str = "",
           required: bool = True, expand: bool = True, soft_name: str = "soft_labels",
           hard_name: str = "labels") -> np.ndarray | None:
    """Class-probability vectors from hard labels (1 or n) or soft labels ([1|n, K]): (n, num_classes), or
    (1, num_classes) for one label for all when not `expand` (a long stream never holds n rows)."""
    has_soft = tensors.is_set(soft)
    if not model.conditional:
        require(not hard, prefix + hard_name, f"{model.ref} is unconditional (kind {model.kind}); send no labels")
        require(not has_soft, prefix + soft_name, f"{model.ref} is unconditional; send no soft labels")
        return None
    k = model.num_classes
    require(not (hard and has_soft), prefix + hard_name, "give labels or soft_labels, not both")
    if hard:
        require(len(hard) in (1, n), prefix + hard_name, f"give 1 label or n = {n} labels, got {len(hard)}")
        if len(hard) == 1:  # one label for every row, the common call: checked without building an array
            label = hard[0]
            require(0 <= label < k, f"{prefix}{hard_name}[0]", f"must be in 0..{k - 1}, got {label}")
            arr = [label]
        else:
            arr = np.asarray(hard, dtype=np.int64)
            bad = np.flatnonzero((arr < 0) | (arr >= k))
            require(not len(bad), f"{prefix}{hard_name}[{bad[0] if len(bad) else 0}]",
                    f"must be in 0..{k - 1}, got {arr[bad[0]] if len(bad) else 0}")
        y = one_hot(arr, k)
    elif has_soft:
        field = prefix + soft_name
        require(model.capabilities()["soft_labels"], field, f"{model.ref} does not take soft labels")
        y = float_tensor(soft, field, max_elements=max(n, 1) * k)
        if n == 1 and y.shape == (k,):
            y = y[None]
        require(y.ndim == 2 and y.shape[1] == k and y.shape[0] in (1, n), f"{field}.shape",
                f"must be [{k}] or [1, {k}], got {list(y.shape)}" if n == 1
                else f"must be [1, {k}] or [{n}, {k}], got {list(y.shape)}")
        require(bool((y >= 0).all()), f"{field}.data", "probabilities must be non-negative")
        sums = y.sum(1, dtype=np.float64)
        worst = int(np.argmax(np.abs(sums - 1)))
        require(abs(sums[worst] - 1) <= SOFT_LABEL_TOLERANCE, f"{field}.data",
                f"each row must sum to 1 (within {SOFT_LABEL_TOLERANCE}); row {worst} sums to {sums[worst]:.6g}")
    else:
        require(not required, prefix + hard_name,
                f"{model.ref} is conditional (kind {model.kind}): give labels or soft_labels")
        return None
    y = np.ascontiguousarray(y, dtype=np.float32)
    return np.repeat(y, n, axis=0) if expand and len(y) == 1 and n > 1 else y


def images(msg: pb.Tensor, model: LoadedModel, limit: int, field: str = "images",
           *, single: bool = False) -> np.ndarray:
    """FLOAT32 in the model's value range or UINT8 0..255, shaped [N, *output_shape] (or one image when
    `single`, with or without the batch axis); returned as float32 in the model's value range."""
    require(model.data_kind == "image" and model.value_range is not None, field,
            f"{model.ref} outputs points, not images")
    shape = model.output_shape
    per = int(np.prod(shape))
    x = tensor(msg, field, max_elements=limit * per)
    require(x.dtype in (np.float32, np.uint8), f"{field}.dtype",
            f"must be FLOAT32 or UINT8, got {pb.DType.Name(msg.dtype)}")
    if single and x.shape == shape:
        x = x[None]
    want = f"[{', '.join(map(str, shape))}] or [1, ...]" if single else f"[N, {', '.join(map(str, shape))}]"
    require(x.ndim == len(shape) + 1 and tuple(x.shape[1:]) == shape and (not single or len(x) == 1),
            f"{field}.shape", f"must be {want}, got {list(x.shape)}")
    count(len(x), limit, f"{field}.shape[0]")
    lo, hi = model.value_range
    if x.dtype == np.uint8:
        return (lo + (hi - lo) * (x.astype(np.float32) / 255.0)).astype(np.float32)
    require(bool(np.isfinite(x).all()), f"{field}.data", "must be finite (no NaN or Inf)")
    tol = RANGE_TOLERANCE * (hi - lo)
    require(bool(((x >= lo - tol) & (x <= hi + tol)).all()), f"{field}.data",
            f"FLOAT32 values must be in the model's value range [{lo:g}, {hi:g}], got "
            f"[{float(x.min()):g}, {float(x.max()):g}] (or send UINT8 0..255)")
    return np.clip(x, lo, hi).astype(np.float32)


def inversion_method(model: LoadedModel, method: int, field: str = "method") -> str:
    """The InversionMethod name to run, or FAILED_PRECONDITION when the model lacks the graph it needs."""
    require(method in pb.InversionMethod.values(), field, f"unknown method {method}")
    caps = model.capabilities()
    if method == pb.INVERSION_METHOD_UNSPECIFIED:
        if caps["invertible"] and caps["optimizable"]:
            return "HYBRID"
        if caps["invertible"]:
            return "ENCODER"
        if caps["optimizable"]:
            return "OPTIMIZE"
        raise FailedPrecondition(f"{model.ref} ships neither an encoder nor a generator_grad graph: it cannot be "
                                 "inverted", field)
    name = pb.InversionMethod.Name(method)
    if name in ("ENCODER", "HYBRID") and not caps["invertible"]:
        raise FailedPrecondition(f"{name} needs an encoder graph; {model.ref} has none"
                                 + (" (use OPTIMIZE)" if caps["optimizable"] else ""), field)
    if name in ("OPTIMIZE", "HYBRID") and not caps["optimizable"]:
        raise FailedPrecondition(f"{name} needs a generator_grad graph; {model.ref} has none"
                                 + (" (use ENCODER)" if caps["invertible"] else ""), field)
    return name
