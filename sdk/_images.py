"""See samples: numpy arrays -> PIL images and a saved grid. Needs Pillow, the thin SDK's optional `images` extra
(`pip install './sdk[images]'`); everything else in the SDK works without it."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

try:
    from PIL import Image
except ImportError:  # the optional extra: the helpers below say how to get it
    Image = None


def require_pillow() -> None:
    if Image is None:
        raise ImportError("the image helpers need Pillow: pip install pillow (or the SDK's extra: './sdk[images]')")


def _to_uint8(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    lo, hi = value_range
    return np.round(np.clip((images.astype(np.float64) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _pil(chw: np.ndarray) -> "Image.Image":
    if chw.shape[0] == 1:
        return Image.fromarray(chw[0], "L")
    return Image.fromarray(np.moveaxis(chw[:3], 0, -1), "RGB")


def _decode_pngs(pngs: list[bytes]) -> np.ndarray:
    """PNG bytes -> uint8 (N, C, H, W)."""
    arrays = [np.array(Image.open(io.BytesIO(b))) for b in pngs]
    return np.stack([a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0) for a in arrays])


def to_pil(images, value_range: tuple[float, float] = (-1.0, 1.0), scale: int = 1):
    """One image (C, H, W) -> PIL.Image; a batch (N, C, H, W) -> list of them; PNG bytes are opened as-is.

    Float images are mapped from `value_range` (the model's, [-1, 1] for the shipped MNIST models); uint8 as is.
    """
    require_pillow()
    if isinstance(images, (bytes, bytearray)):
        return Image.open(io.BytesIO(images))
    if isinstance(images, list) and images and isinstance(images[0], (bytes, bytearray)):
        return [Image.open(io.BytesIO(b)) for b in images]
    arr = _to_uint8(images, value_range)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 3:
        img = _pil(arr)
        return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img
    return [to_pil(a, value_range, scale) for a in arr]


def grid(images, nrow: int | None = None, value_range: tuple[float, float] = (-1.0, 1.0), padding: int = 2,
         scale: int = 1) -> "Image.Image":
    """A batch (N, C, H, W) as one image, `nrow` per row (default: about square)."""
    require_pillow()
    if isinstance(images, list) and images and isinstance(images[0], (bytes, bytearray)):
        images = _decode_pngs(images)
    arr = _to_uint8(images, value_range)
    if arr.ndim != 4 or len(arr) == 0:
        raise ValueError(f"need a non-empty batch (N, C, H, W), got shape {arr.shape}")
    n, c, h, w = arr.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = np.zeros((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), np.uint8)
    for i, img in enumerate(arr):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        canvas[:, y:y + h, x:x + w] = img
    out = _pil(canvas)
    return out.resize((out.width * scale, out.height * scale), Image.NEAREST) if scale > 1 else out


def save_grid(images, path: str | Path, nrow: int | None = None, value_range: tuple[float, float] = (-1.0, 1.0),
              padding: int = 2, scale: int = 1) -> Path:
    """Save a batch as one PNG grid; returns the path."""
    path = Path(path)
    grid(images, nrow, value_range, padding, scale).save(path)
    return path
