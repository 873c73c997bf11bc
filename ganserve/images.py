"""Generator outputs as users receive them: float32 clamped to the model's value range, uint8 0..255, 8-bit PNG.

One implementation for the server's replies and for the batch engines that run a generator themselves
(ganserve.scale), so the same seed gives the same bytes whichever path made them.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def clamp(x: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """float32 rows clamped to the value range (ONNX Runtime's tanh can overshoot by an ulp: -1.0000001)."""
    if value_range is not None:  # two ufuncs: np.clip's Python wrapper costs more than the clip of a sample
        lo, hi = value_range
        x = np.minimum(np.maximum(x, np.float32(lo)), np.float32(hi))
    return np.ascontiguousarray(x, np.float32)


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
