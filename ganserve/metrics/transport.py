"""W2 by exact OT and the Sinkhorn divergence (entropic OT, debiased) between samples, both with POT."""

from __future__ import annotations

import math
import warnings

import numpy as np

from . import _inputs as I
from .intervals import normal_ci, split_ci
from .results import W1_MAX_POINTS, MetricError, Result
from .wasserstein import _ot, same_subsample


def w2_exact(p, q, *, rng, boot_rng, bootstrap, confidence, max_points=W1_MAX_POINTS):
    """W2 = sqrt(min over couplings of E|x - y|^2) (POT ot.emd2, squared Euclidean cost) on seeded subsamples;
    interval by the delta method on W2^2 (the dual potentials are its influence functions), mapped through
    the square root. Like w1_exact it covers the estimator's expectation, which exceeds W2 at finite n."""
    ot = _ot()
    a, b = I.pair(p, q, "w2_exact", min_n=1)
    ip, iq = same_subsample(rng, len(a), len(b), max_points)
    x, y = a[ip], b[iq]
    scale = max(float(np.abs(x).max()), float(np.abs(y).max()), 1e-300)
    cost = ot.dist(x / scale, y / scale, metric="sqeuclidean")  # (n, m), rescaled: no overflow of squares
    wa, wb = np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y))
    w2sq, log = ot.emd2(wa, wb, cost, numItermax=10**7, log=True)
    w2sq = max(float(w2sq), 0.0)
    value = math.sqrt(w2sq) * scale
    notes = []
    if len(x) < len(a) or len(y) < len(b):
        notes.append(f"exact OT on a seeded subsample of {len(x)} x {len(y)} points (cap {max_points})")
    if bootstrap > 0 and w2sq > 0:
        se_sq = math.sqrt(np.var(log["u"]) / len(x) + np.var(log["v"]) / len(y))
        lo, hi = normal_ci(w2sq, se_sq, confidence)
        ci = (math.sqrt(max(lo, 0.0)) * scale, math.sqrt(max(hi, 0.0)) * scale)
        notes.append("interval: normal on W2^2 by the delta method with the OT dual potentials, square-rooted; it "
                     "covers the estimator's expectation E W2(P_n, Q_m), which is above W2(P, Q) at finite n")
    else:
        ci = (value, value)
    return Result(value, ci, len(a), len(b), "; ".join(notes), "exact OT (POT ot.emd2), squared Euclidean cost")


def _sinkhorn_divergence(ot, x: np.ndarray, y: np.ndarray, reg: float) -> float:
    """S = OT_e(x, y) - OT_e(x, x)/2 - OT_e(y, y)/2 with Euclidean cost and e = reg * median cost (Genevay,
    Peyre & Cuturi 2018; Feydy et al. 2019): 0 when P = Q, between MMD (large e) and W1 (small e)."""
    eps = reg * float(np.median(ot.dist(x, y, metric="euclidean")) or 1.0)

    def cost(u, v):
        w_u, w_v = np.full(len(u), 1.0 / len(u)), np.full(len(v), 1.0 / len(v))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # POT warns on underflow or no convergence: refuse, do not guess
            try:
                return float(ot.sinkhorn2(w_u, w_v, ot.dist(u, v, metric="euclidean"), eps, numItermax=2000,
                                          stopThr=1e-7))
            except (UserWarning, RuntimeWarning) as e:
                raise MetricError(f"sinkhorn: the iterations did not converge at reg={reg:g} ({e}); raise reg") from e

    return cost(x, y) - 0.5 * cost(x, x) - 0.5 * cost(y, y)


SINKHORN_MAX_POINTS = 500   # three entropic OT problems per estimate, plus 10 groups for the interval


def sinkhorn(p, q, *, rng, boot_rng, bootstrap, confidence, reg=0.05, max_points=SINKHORN_MAX_POINTS):
    ot = _ot()
    a, b = I.pair(p, q, "sinkhorn", min_n=2)
    ip, iq = same_subsample(rng, len(a), len(b), max_points)
    x, y = a[ip], b[iq]
    scale = max(float(np.abs(x).max()), float(np.abs(y).max()), 1e-300)
    x, y = x / scale, y / scale
    value = max(_sinkhorn_divergence(ot, x, y, reg), 0.0) * scale
    notes = [f"Sinkhorn divergence, epsilon = {reg:g} x the median cost"]
    if len(x) < len(a) or len(y) < len(b):
        notes.append(f"on a seeded subsample of {len(x)} x {len(y)} points (cap {max_points})")
    if bootstrap > 0:
        # Entropic OT has the parametric sample complexity (Genevay et al. 2019): variance ~ 1/n, so disjoint
        # groups scaled by 1/G are valid here.
        ci, note = split_ci(lambda u, v: _sinkhorn_divergence(ot, u, v, reg) * scale, x, y, value, boot_rng,
                            confidence, min_size=20)
        ci = (max(ci[0], 0.0), ci[1])
        notes.append(note)
    else:
        ci = (value, value)
    return Result(value, ci, len(a), len(b), "; ".join(notes), f"Sinkhorn divergence (POT), reg={reg:g}")
