"""Precision and recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020): k-NN balls
around real and fake feature vectors."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from scipy.spatial import cKDTree

from . import _inputs as I
from ._inputs import checkpoint
from .intervals import split_ci
from .options import check
from .neighbours import TREE_MAX_DIM, chunks, sq_norms
from .results import FEATURE_MAX_N, Result

_CACHE: OrderedDict = OrderedDict()
_LOCK = threading.Lock()


TIE = 1e-12  # relative: squared distances closer than this to a radius count as ties (not inside)


def _kth_radius_sq(x: np.ndarray, ks: list[int]) -> dict[int, np.ndarray]:
    """Squared distance from each point to its k-th nearest other point, for each k in ks (ties and copies
    count, as in the reference implementations of Kynkaanniemi et al. 2019 and Naeem et al. 2020); float64."""
    if x.shape[1] <= TREE_MAX_DIM:
        dist, _ = cKDTree(x).query(x, k=max(ks) + 1)
        return {k: dist[:, k] ** 2 for k in ks}
    xn = sq_norms(x)
    out = {k: np.empty(len(x)) for k in ks}
    for s, e in chunks(len(x), len(x)):
        checkpoint()
        d2 = xn[s:e, None] + xn[None] - 2.0 * (x[s:e] @ x.T)
        part = np.partition(d2, ks, axis=1)  # column 0 is the point itself (distance 0)
        for k in ks:
            out[k][s:e] = np.maximum(part[:, k], 0.0)
    return out


def prdc_compute(real: np.ndarray, fake: np.ndarray, ks: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """Per-point indicators behind precision, recall, density and coverage for each k in ks, in one pass over
    the real-fake distances (chunked: memory stays ~64 MB whatever n).

    All in float64 on centred data, and "inside a ball" means closer than its radius by more than the rounding
    of the squared distances (TIE relative to the squared norms): a point exactly on a ball's edge (the k-th
    neighbour's twin when a set is compared with itself) is outside, as with exact arithmetic and the
    references' strict `<`. So a set against itself has precision = recall = coverage = density = 1.
    """
    s = I.big_scale(real, fake)  # memberships are scale-free: huge data is divided by a power of two first
    real, fake = real / s, fake / s
    centre = real.mean(0)
    r, f = real - centre, fake - centre
    rad_r = _kth_radius_sq(r, ks)  # {k: (n_real,)}
    rad_f = _kth_radius_sq(f, ks)  # {k: (n_fake,)}
    rn, fn = sq_norms(r), sq_norms(f)
    inside = {k: np.empty(len(f), np.int64) for k in ks}     # real balls containing each fake point
    recalled = {k: np.zeros(len(r), bool) for k in ks}        # real point inside some fake ball
    nearest_fake = np.full(len(r), np.inf)                    # squared distance from each real point to the nearest fake
    for s, e in chunks(len(f), len(r)):
        checkpoint()
        scale = fn[s:e, None] + rn[None]                       # (c, n_real)
        d2 = np.maximum(scale - 2.0 * (f[s:e] @ r.T), 0.0) + TIE * scale  # rounded up past the rounding error
        np.minimum(nearest_fake, d2.min(0), out=nearest_fake)
        for k in ks:
            inside[k][s:e] = (d2 < rad_r[k][None]).sum(1)
            recalled[k] |= (d2 < rad_f[k][s:e, None]).any(0)
    return {k: {"precision": (inside[k] > 0).astype(np.float64), "density": inside[k] / k,
                "recall": recalled[k].astype(np.float64), "coverage": (nearest_fake < rad_r[k]).astype(np.float64)}
            for k in ks}


def prdc_per_point(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """prdc_compute with a small cache (thread-safe: the server calls from several threads). The pass also
    computes the default k's (3 for precision/recall, 5 for density/coverage), so the four metrics on one pair
    of inputs cost one pass."""
    key = (I.digest(real), I.digest(fake))
    with _LOCK:
        hit = _CACHE.get((key, k))
        if hit is not None:
            _CACHE.move_to_end((key, k))
            return hit
    ks = sorted({k} | ({3, 5} & set(range(1, min(len(real), len(fake))))))
    computed = prdc_compute(real, fake, ks)
    with _LOCK:
        for kk, per_point in computed.items():
            _CACHE[(key, kk)] = per_point
        while len(_CACHE) > 8:
            _CACHE.popitem(last=False)
    return computed[k]


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): the fraction of fake points inside some real
    point's k-NN ball, and of real points inside some fake point's k-NN ball."""
    x, y = I.pair(real, fake, "precision", min_n=check("k", k) + 1, max_n=FEATURE_MAX_N)
    pp = prdc_per_point(x, y, k)
    return float(pp["precision"].mean()), float(pp["recall"].mean())


def density_coverage(real, fake, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020): density = mean over fake points of (number of real k-NN
    balls containing it) / k; coverage = fraction of real points whose k-NN ball contains a fake point."""
    x, y = I.pair(real, fake, "density", min_n=check("k", k) + 1, max_n=FEATURE_MAX_N)
    pp = prdc_per_point(x, y, k)
    return float(pp["density"].mean()), float(pp["coverage"].mean())


def prdc_metric(name: str, default_k: int):
    def run(p, q, *, rng, boot_rng, bootstrap, confidence, k=default_k, per_sample=False):
        a, b = I.pair(p, q, name, min_n=k + 1, max_n=FEATURE_MAX_N)
        terms = prdc_per_point(a, b, k)[name]
        value = float(terms.mean())
        if bootstrap > 0:
            ci, note = split_ci(lambda u, v: float(prdc_compute(u, v, [k])[k][name].mean()), a, b, value, boot_rng,
                                confidence, min_size=max(k + 2, 50))
            if name != "density":
                ci = (max(ci[0], 0.0), min(ci[1], 1.0))
        else:
            ci, note = (value, value), ""
        cite = "Kynkaanniemi et al. 2019" if name in ("precision", "recall") else "Naeem et al. 2020"
        return Result(value, ci, len(a), len(b), note, f"k-NN manifolds ({cite}), k={k}",
                      terms.copy() if per_sample else None)

    return run
