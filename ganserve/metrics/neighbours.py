"""Nearest-neighbour distances shared by the k-NN KL, Monte Carlo and precision/recall families: a k-d tree in
low dimension, chunked distance matrices above it (bounded memory)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ._inputs import checkpoint
from .results import DUPLICATE_LIMIT, MetricError

TREE_MAX_DIM = 8  # cKDTree is fast in low dimension; above that, chunked distance matrices win


def sq_norms(a: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, a)


def chunks(n_rows: int, n_cols: int, budget: int = 1 << 23):
    """(start, stop) row blocks so that a block of a (n_rows, n_cols) matrix holds about `budget` entries."""
    step = max(1, budget // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def _atoms_message(k: int, m: int, copies: int) -> str:
    return (f"too few distinct points for k={k}: {m} points, up to {copies} exact copies of one point. The samples "
            "hold atoms; k-NN estimators assume continuous distributions (use a histogram metric)")


def kth_nonzero_distance(query: np.ndarray, ref: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query point: distance to its k-th nearest point of `ref` that is not an exact copy of it,
    and the number of exact copies in `ref` (which includes the query itself when ref is the query set)."""
    n, m = len(query), len(ref)
    if query.shape[1] <= TREE_MAX_DIM:
        tree = cKDTree(ref)
        dup = tree.query_ball_point(query, r=0.0, return_length=True).astype(np.int64)
        kk = int(dup.max()) + k
        if kk > m:
            raise MetricError(_atoms_message(k, m, int(dup.max())))
        dist, _ = tree.query(query, k=kk)
        dist = dist.reshape(n, kk)
        return dist[np.arange(n), dup + k - 1], dup
    # Dense path in float32 on centred data (the distances' rounding error is ~1e-7 of the squared norms);
    # "exact copy" then means a squared distance below 1e-6 of the squared norms.
    centre = ref.mean(0)
    q32 = np.ascontiguousarray(query - centre, np.float32)
    r32 = np.ascontiguousarray(ref - centre, np.float32)
    out = np.empty(n)
    dup = np.empty(n, np.int64)
    rn, qn = sq_norms(r32), sq_norms(q32)
    for s, e in chunks(n, m):
        checkpoint()
        d2 = qn[s:e, None] + rn[None] - 2.0 * (q32[s:e] @ r32.T)  # (c, m)
        same = d2 <= 1e-6 * (qn[s:e, None] + rn[None]) + 1e-30
        dup[s:e] = same.sum(1)
        d2[same] = np.inf
        if k > m - dup[s:e].max():
            raise MetricError(_atoms_message(k, m, int(dup[s:e].max())))
        out[s:e] = np.sqrt(np.maximum(np.partition(d2, k - 1, axis=1)[:, k - 1], 0.0))
    return out, dup


def atoms(x: np.ndarray) -> np.ndarray:
    """Copy counts of the points of x repeated exactly more than DUPLICATE_LIMIT times (atoms), or empty."""
    if len(x) <= DUPLICATE_LIMIT:
        return np.zeros(0, np.int64)
    counts = np.unique(x, axis=0, return_counts=True)[1]
    return counts[counts > DUPLICATE_LIMIT]
