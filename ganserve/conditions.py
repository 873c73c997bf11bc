"""Class conditions as conditional generators take them: (n, K) float32 rows, one-hot from labels or a
probability vector (soft labels). The server's request checks and the Ray batch engine use these."""

from __future__ import annotations

import numpy as np

SOFT_LABEL_TOLERANCE = 1e-3  # a probability vector may miss a sum of 1 by this much (float rounding), not more


def one_hot(labels, k: int) -> np.ndarray:
    """(len(labels), k) float32 rows with a 1 at each label."""
    return np.eye(k, dtype=np.float32)[np.asarray(labels, np.int64)]
