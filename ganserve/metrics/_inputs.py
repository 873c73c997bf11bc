"""Input validation shared by every family: each failure is a MetricError that names the side and the reason."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import math
from typing import Any, Callable

import numpy as np
from scipy import special

from .results import MetricError


def int_option(name: str, value, lo: int, hi: int) -> int:
    """An integer option in lo..hi, or a MetricError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise MetricError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    return int(value)


def counts(x: Any, side: str, metric: str, exact: bool) -> np.ndarray:
    try:
        c = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MetricError(f"{side}: metric {metric} needs a histogram (count vector); got {type(x).__name__}") from e
    if c.ndim != 1:
        raise MetricError(
            f"{side}: metric {metric} takes a histogram (count vector of shape (K,)); got an array of shape "
            f"{c.shape}. Bin the points first (class_histogram of evaluator labels, or the mixture mode histogram)")
    if len(c) < 2:
        raise MetricError(f"{side}: a histogram needs at least 2 bins, got {len(c)}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise MetricError(f"{side}: histogram counts must be finite and >= 0")
    if c.sum() <= 0:
        raise MetricError(f"{side}: histogram is empty (all counts are 0)")
    if not exact and np.any(c != np.round(c)):
        raise MetricError(f"{side}: histogram counts must be whole numbers (the interval resamples them); "
                          f"pass {side.lower()}_exact=True if this side is a known probability vector")
    return c


def points(x: Any, side: str, metric: str, min_n: int = 2, max_n: int | None = None) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MetricError(f"{side}: metric {metric} needs an array of points (N, D); got {type(x).__name__}") from e
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise MetricError(f"{side}: metric {metric} needs points of shape (N, D); got shape {a.shape} "
                          "(flatten images to (N, H*W*C) or use evaluator features)")
    if a.shape[1] == 0:
        raise MetricError(f"{side}: points have 0 dimensions")
    if len(a) < min_n:
        raise MetricError(f"{side}: metric {metric} needs at least {min_n} points, got {len(a)}")
    if max_n is not None and len(a) > max_n:
        raise MetricError(f"{side}: {len(a)} points is over the limit of {max_n} for metric {metric} "
                          "(its cost grows as n^2); subsample first")
    if not np.all(np.isfinite(a)):
        bad = int((~np.isfinite(a)).any(1).sum())
        raise MetricError(f"{side}: {bad} point(s) contain NaN or inf")
    return a


def pair(p, q, metric: str, min_n: int = 2, max_n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    a = points(p, "P", metric, min_n, max_n)
    b = points(q, "Q", metric, min_n, max_n)
    if a.shape[1] != b.shape[1]:
        raise MetricError(f"P and Q must have the same dimension: P has {a.shape[1]}, Q has {b.shape[1]}")
    return a, b


def scores(x: Any, side: str, metric: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MetricError(f"{side}: metric {metric} needs critic scores (N,); got {type(x).__name__}") from e
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise MetricError(f"{side}: metric {metric} needs one critic score per sample, shape (N,); got {a.shape}")
    if len(a) < 2:
        raise MetricError(f"{side}: metric {metric} needs at least 2 scores, got {len(a)}")
    if not np.all(np.isfinite(a)):
        raise MetricError(f"{side}: critic scores contain NaN or inf")
    return a


def big_scale(*arrays: np.ndarray, threshold: float = 1e100) -> float:
    """1.0 for ordinary data; for data beyond `threshold` in magnitude, a power of two near its largest value.
    Dividing by it is exact and keeps squared distances finite (cKDTree and the dense paths square them);
    k-NN ratios and ball memberships do not change, and a homogeneous distance is multiplied back."""
    top = max(float(np.abs(a).max()) for a in arrays)
    return 1.0 if top <= threshold else float(2.0 ** math.frexp(top)[1])


def is_density(obj: Any) -> bool:
    return callable(getattr(obj, "log_density", None)) and callable(getattr(obj, "sample", None))


def digest(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    h = hashlib.blake2b(digest_size=16)
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.view(np.uint8).reshape(-1))
    return h.digest()


def log_unit_ball(d: int) -> float:
    """log of the volume of the unit ball in R^d."""
    return 0.5 * d * math.log(math.pi) - special.gammaln(0.5 * d + 1.0)


def rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The two seeded streams every estimator gets: one for the estimate (subsamples, projections, Monte Carlo
    draws), one for the interval (resamples), so the point estimate does not depend on `bootstrap`."""
    seed = int_option("seed", seed, 0, 2**64 - 1)
    rng, boot_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    return rng, boot_rng


class Cancelled(Exception):
    """Raised inside a long estimator loop when the caller's `cancelled()` returned True (the server passes
    its call's deadline/cancellation check)."""


_CANCELLED: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("cancelled", default=None)


@contextlib.contextmanager
def cancellation(cancelled: Callable[[], bool] | None):
    """Make `checkpoint()` in this thread's estimator loops consult `cancelled` while the block runs."""
    token = _CANCELLED.set(cancelled)
    try:
        yield
    finally:
        _CANCELLED.reset(token)


def checkpoint() -> None:
    """Raise Cancelled if the current estimate's caller asked to stop; called once per chunk or resample."""
    cancelled = _CANCELLED.get()
    if cancelled is not None and cancelled():
        raise Cancelled("the estimate was cancelled by its caller")
