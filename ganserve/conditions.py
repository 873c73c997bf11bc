"""Class conditions as conditional generators take them: (n, K) float32 rows, one-hot from labels or a
probability vector (soft labels). The server's request checks and the Ray batch engine use these."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

CONDITIONAL_KINDS = ("cgan", "latent-constraint")
SOFT_LABEL_TOLERANCE = 1e-3  # a probability vector may miss a sum of 1 by this much (float rounding), not more


def one_hot(labels, k: int) -> np.ndarray:
    """(len(labels), k) float32 rows with a 1 at each label (a new array: the rows are copied out)."""
    return _identity(k)[np.asarray(labels, np.int64)]


@functools.lru_cache(maxsize=64)
def _identity(k: int) -> np.ndarray:
    eye = np.eye(k, dtype=np.float32)
    eye.flags.writeable = False
    return eye


def is_conditional(manifest: dict[str, Any]) -> bool:
    """Whether a model's generator takes class conditions: its kind, a second generator input, classes."""
    gen = manifest["graphs"].get("generator")
    return (manifest["kind"] in CONDITIONAL_KINDS and gen is not None and len(gen["inputs"]) >= 2
            and int(manifest["num_classes"]) > 0)
