"""Wasserstein-1 from samples: exact OT (POT ot.emd2) on capped subsamples, sliced W1 over random directions,
and the exact 1-D W1; each with its interval."""

from __future__ import annotations

import math
import os

import numpy as np
from scipy import stats

from . import _inputs as I
from .intervals import boot_note, normal_ci, percentile_ci
from .results import SORT_MAX_N, W1_MAX_POINTS, MetricError, Result


def _ot():
    """POT without its torch/jax/tensorflow/cupy backends (the server must not load torch); imported on first
    use because it adds ~0.45 s (sklearn) to a server start that may never evaluate a divergence (measured)."""
    for lib in ("PYTORCH", "JAX", "CUPY", "TENSORFLOW"):
        os.environ.setdefault(f"POT_BACKEND_DISABLE_{lib}", "1")
    import ot  # lazy on purpose: see the docstring (measured start-up cost)

    return ot


def homogeneous(fn):
    """Run a distance of degree 1 (W1, sliced W1) on points divided by a power of two when they are huge
    (I.big_scale), and multiply the value and interval back: squared distances inside POT and scipy stay finite."""
    def run(p, q, **kw):
        a, b = I.pair(p, q, fn.__name__, min_n=1)
        s = I.big_scale(a, b)
        if s == 1.0:
            return fn(a, b, **kw)
        r = fn(a / s, b / s, **kw)
        value, lo, hi = r.value * s, r.ci[0] * s, r.ci[1] * s
        if not all(map(math.isfinite, (value, lo, hi))):
            raise MetricError(f"{fn.__name__}: the points are too large (up to {s:.3g}): the distance overflows "
                              "float64; rescale them")
        note = f"points divided by {s:.3g} for the computation (figures in this note are in those units); {r.note}"
        return Result(value, (lo, hi), r.n_p, r.n_q, note, r.estimator)

    run.__name__ = fn.__name__
    return run


def same_subsample(rng: np.random.Generator, n_p: int, n_q: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded subsample indices. With equal sizes both sides use the same indices: the choice of indices is
    independent of the data, so this is as valid as two independent draws, and identical inputs stay identical."""
    ip = np.sort(rng.choice(n_p, cap, replace=False)) if n_p > cap else np.arange(n_p)
    if n_q == n_p:
        return ip, ip
    iq = np.sort(rng.choice(n_q, cap, replace=False)) if n_q > cap else np.arange(n_q)
    return ip, iq


@homogeneous
def w1_exact(p, q, *, rng, boot_rng, bootstrap, confidence, max_points=W1_MAX_POINTS):
    ot = _ot()
    a, b = I.pair(p, q, "w1_exact", min_n=1)
    ip, iq = same_subsample(rng, len(a), len(b), max_points)
    x, y = a[ip], b[iq]
    cost = ot.dist(x, y, metric="euclidean")  # (n, m)
    wa, wb = np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y))
    value, log = ot.emd2(wa, wb, cost, numItermax=10**7, log=True)
    value = float(max(value, 0.0))
    notes = []
    if len(x) < len(a) or len(y) < len(b):
        notes.append(f"exact OT on a seeded subsample of {len(x)} x {len(y)} points (cap {max_points})")
    # W1 = mean_i u(x_i) + mean_j v(y_j) at the optimal dual potentials (u, v), which are the estimator's
    # influence functions (delta method; CLT of del Barrio, Gonzalez-Sanz & Loubes 2021 for empirical OT).
    se = math.sqrt(np.var(log["u"]) / len(x) + np.var(log["v"]) / len(y)) if bootstrap > 0 else 0.0
    ci = normal_ci(value, se, confidence)
    ci = (max(ci[0], 0.0), ci[1])
    notes.append("interval: normal, delta method with the OT dual potentials (no resampling: emd2 is costly); it "
                 "covers the estimator's expectation E W1(P_n, Q_m), not W1(P, Q)")
    notes.append(f"bias: W1 between finite samples overestimates W1(P, Q); estimated upward bias at P = Q "
                 f"{_null_bias(ot, x, y, rng):.3g} (W1 between random halves of each side, scaled by 2^-1/max(d,2)); "
                 "smaller when P and Q are far apart")
    return Result(value, ci, len(a), len(b), "; ".join(notes), "exact OT (POT ot.emd2), Euclidean cost")


def _null_bias(ot, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> float:
    """The finite-sample W1 between two samples of one distribution, from random halves of P and of Q and
    scaled from n/2 to n by the n^(-1/max(d, 2)) rate: the estimator's upward bias when P = Q."""
    out = []
    for z in (x, y):
        if len(z) < 4:
            return 0.0
        perm = rng.permutation(len(z))
        u, v = z[perm[: len(z) // 2]], z[perm[len(z) // 2: 2 * (len(z) // 2)]]
        w = np.full(len(u), 1.0 / len(u))
        out.append(float(ot.emd2(w, w, ot.dist(u, v, metric="euclidean"), numItermax=10**7)))
    return float(np.mean(out)) * 2.0 ** (-1.0 / max(x.shape[1], 2))


def w1_from_cdfs(order: np.ndarray, gaps: np.ndarray, signed_w: np.ndarray) -> np.ndarray:
    """W1 between two weighted 1-D measures as the integral of |F - G|, for pooled points already sorted:
    order (L, n+m) sorts each projection, gaps (L, n+m-1) are the sorted spacings, signed_w (B, n+m) holds
    P's weights and minus Q's. Returns (B, L)."""
    out = np.empty((len(signed_w), len(order)))
    for j in range(len(order)):
        cdf_diff = np.cumsum(signed_w[:, order[j]], axis=1)[:, :-1]  # (B, n+m-1)
        out[:, j] = np.abs(cdf_diff) @ gaps[j]
    return out


def w1_influence(order: np.ndarray, gaps: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Per direction, W1 = sum_k |D_k| g_k with D = F_P - F_Q on the sorted pooled grid. Its influence
    function for a point at sorted position j is R_j = sum_{k >= j} sign(D_k) g_k (centred over P for P's
    points, negated for Q's). Returns (L,) the W1 per direction and (n+m,) R averaged over directions."""
    w = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    per_direction = np.empty(len(order))
    infl = np.zeros(n + m)
    for j in range(len(order)):
        I.checkpoint()
        diff = np.cumsum(w[order[j]])[:-1]  # (n+m-1,)
        per_direction[j] = np.abs(diff) @ gaps[j]
        r = np.zeros(n + m)
        r[:-1] = np.cumsum((np.sign(diff) * gaps[j])[::-1])[::-1]
        infl[order[j]] += r / len(order)
    return per_direction, infl


@homogeneous
def sliced_w(p, q, *, rng, boot_rng, bootstrap, confidence, projections=100):
    ot = _ot()
    a, b = I.pair(p, q, "sliced_w", min_n=1, max_n=SORT_MAX_N)
    L = projections
    theta = ot.sliced.get_random_projections(a.shape[1], L, seed=int(rng.integers(2**31)))  # (d, L)
    value = float(ot.sliced_wasserstein_distance(a, b, n_projections=L, p=1, projections=theta))
    # Interval by the delta method: project once, sort once per direction, then the influence of each point.
    pooled = np.concatenate([a, b]) @ theta  # (n+m, L)
    order = np.argsort(pooled, axis=0).T  # (L, n+m)
    gaps = np.diff(np.take_along_axis(pooled.T, order, axis=1), axis=1)  # (L, n+m-1)
    per_direction, infl = w1_influence(order, gaps, len(a), len(b))
    var = (np.var(infl[:len(a)]) / len(a) + np.var(infl[len(a):]) / len(b)  # sampling of the points
           + np.var(per_direction, ddof=1) / L)                            # sampling of the directions
    ci = normal_ci(value, math.sqrt(var) if bootstrap > 0 else 0.0, confidence)
    ci = (max(ci[0], 0.0), ci[1])
    notes = [f"sliced W1: mean over {L} seeded random directions of the 1-D W1 of the projections",
             "interval: normal, delta method (influence of each point on the 1-D W1s) plus the spread over "
             "directions / L"]
    return Result(value, ci, len(a), len(b), "; ".join(notes), f"sliced Wasserstein (POT), p=1, {L} projections")


@homogeneous
def w1_1d(p, q, *, rng, boot_rng, bootstrap, confidence):
    a, b = I.pair(p, q, "w1_1d", min_n=1, max_n=SORT_MAX_N)
    if a.shape[1] != 1:
        raise MetricError(f"w1_1d is for 1-D samples; got dimension {a.shape[1]} (use w1_exact or sliced_w)")
    x, y = a[:, 0], b[:, 0]
    value = float(stats.wasserstein_distance(x, y))
    if bootstrap > 0:
        pooled = np.concatenate([x, y])
        order = np.argsort(pooled)[None]
        gaps = np.diff(pooled[order[0]])[None]
        same = len(a) == len(b)  # paired resampling, as in sliced_w
        wp = boot_rng.multinomial(len(x), np.full(len(x), 1.0 / len(x)), size=bootstrap) / len(x)
        wq = wp if same else boot_rng.multinomial(len(y), np.full(len(y), 1.0 / len(y)), size=bootstrap) / len(y)
        reps = w1_from_cdfs(order, gaps, np.concatenate([wp, -wq], axis=1))[:, 0]
        ci = percentile_ci(reps, value, confidence)
        note = boot_note(bootstrap)
    else:
        ci, note = (value, value), ""
    return Result(value, ci, len(a), len(b), note, "scipy.stats.wasserstein_distance (exact in 1-D)")
