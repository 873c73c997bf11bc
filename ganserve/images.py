"""Generator outputs as users receive them: float32 clamped to the model's value range, uint8 0..255, 8-bit PNG.

One implementation for the server's replies and for the batch engines that run a generator themselves
(ganserve.scale), so the same seed gives the same bytes whichever path made them.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

OUTPUT_TOLERANCE = 1e-3  # of the value range: ONNX Runtime's tanh may overshoot by an ulp, a broken model more


def output_problem(x: np.ndarray, value_range: tuple[float, float] | None, what: str = "samples") -> str | None:
    """Why generator output `x` must not be answered ("produced ..."), or None: every value finite and within
    the value range up to OUTPUT_TOLERANCE. Two reductions (min, max): NaN propagates into both, so this also
    catches NaN and +-Inf."""
    return None if x.size == 0 else _problem(x, _extremes(x), value_range, what)


def clamp(x: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """float32 rows clamped to the value range (ONNX Runtime's tanh can overshoot by an ulp: -1.0000001).
    Rows already within it come back as they are, uncopied: two reductions cost a fifth of the two passes and
    the new array a clamp makes (an int8 variant's output never overshoots; an fp32 tanh's mostly does)."""
    x = np.ascontiguousarray(x, np.float32)
    return _clamped(x, _extremes(x), value_range) if value_range is not None and x.size else x


def checked(x: np.ndarray, value_range: tuple[float, float] | None, *,
            clamped: bool = True) -> tuple[str | None, np.ndarray]:
    """(output_problem's answer, the float32 rows, clamped as clamp() does when `clamped` and there is no
    problem) from one pair of reductions: what a generator's rows go through before they are answered."""
    x = np.ascontiguousarray(x, np.float32)
    if x.size == 0:
        return None, x
    seen = _extremes(x)
    problem = _problem(x, seen, value_range, "samples")
    if problem is None and clamped and value_range is not None:
        x = _clamped(x, seen, value_range)
    return problem, x


def _extremes(x: np.ndarray) -> tuple[float, float]:
    return float(x.min()), float(x.max())


def _problem(x: np.ndarray, seen: tuple[float, float], value_range: tuple[float, float] | None, what: str) -> str | None:
    lo_seen, hi_seen = seen
    if not (np.isfinite(lo_seen) and np.isfinite(hi_seen)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        return f"produced {bad} non-finite value(s) (NaN/Inf) out of {x.size} in its {what}"
    if value_range is not None:
        lo, hi = value_range
        tol = OUTPUT_TOLERANCE * (hi - lo)
        if lo_seen < lo - tol or hi_seen > hi + tol:
            return f"produced {what} in [{lo_seen:g}, {hi_seen:g}], outside its declared value range [{lo:g}, {hi:g}]"
    return None


def _clamped(x: np.ndarray, seen: tuple[float, float], value_range: tuple[float, float]) -> np.ndarray:
    lo, hi = np.float32(value_range[0]), np.float32(value_range[1])
    if seen[0] < lo or seen[1] > hi:  # two ufuncs: np.clip's Python wrapper costs more than a sample's clip
        x = np.minimum(np.maximum(x, lo), hi)
    return x


def to_uint8(x: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """The value range mapped onto 0..255, rounded."""
    lo, hi = value_range
    return np.round(np.clip((x - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """One (C, H, W) uint8 image as an 8-bit PNG (grey for C=1, RGB for C=3)."""
    c = image.shape[0]
    pil = Image.fromarray(image[0], "L") if c == 1 else Image.fromarray(np.moveaxis(image[:3], 0, -1), "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()
