"""Wasserstein-1 (ganserve/metrics/wasserstein.py) called directly with small inputs and known answers: exact
1-D transport, shifts, a written-out influence function, seeded replays of the subsample and the bootstrap, and
the homogeneous rescaling built per test (the module applies it at import, before a test could change it)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ganserve.metrics import intervals as C
from ganserve.metrics import wasserstein as W
from ganserve.metrics.results import MetricError


def _kw(seed=0):
    return dict(rng=np.random.default_rng(seed), boot_rng=np.random.default_rng(seed + 1), confidence=0.9)


def test_w1_1d_known_values_and_paired_bootstrap():
    x = np.array([0.0, 1.0, 3.0])
    r = W.w1_1d(x, x + 1, bootstrap=0, **_kw())
    assert r.value == pytest.approx(1.0, abs=1e-15) and r.ci == (r.value, r.value) and r.note == ""
    assert (r.n_p, r.n_q, r.estimator) == (3, 3, "scipy.stats.wasserstein_distance (exact in 1-D)")
    r = W.w1_1d(x, x + 1, bootstrap=50, **_kw())  # paired weights: every replicate is a shift by 1
    assert r.ci == pytest.approx((1.0, 1.0), abs=1e-12)
    assert r.note == "interval: percentile bootstrap, 50 resamples of the points, seeded"
    y = np.array([0.0, 2.0])
    r = W.w1_1d(x, y, bootstrap=40, **_kw(3))
    boot = np.random.default_rng(4)
    wp = boot.multinomial(3, [1 / 3] * 3, size=40) / 3
    wq = boot.multinomial(2, [0.5, 0.5], size=40) / 2
    reps = [stats.wasserstein_distance(x, y, u, v) for u, v in zip(wp, wq)]
    want = stats.wasserstein_distance(x, y)
    assert r.value == pytest.approx(want) and r.ci == pytest.approx(C.percentile_ci(reps, want, 0.9), abs=1e-12)
    with pytest.raises(MetricError, match=r"^w1_1d is for 1-D samples; got dimension 2 \(use w1_exact or sliced_w\)$"):
        W.w1_1d(np.zeros((2, 2)), np.zeros((2, 2)), bootstrap=0, **_kw())


def test_w1_from_cdfs_and_influence_small_cases():
    order, gaps = np.array([[0, 1]]), np.array([[2.0]])
    np.testing.assert_allclose(W.w1_from_cdfs(order, gaps, np.array([[1.0, -1.0], [0.5, -0.5]])), [[2.0], [1.0]])
    per, infl = W.w1_influence(order, gaps, 1, 1)
    assert per.tolist() == [2.0] and infl.tolist() == [2.0, 0.0]
    # P = {0, 3}, Q = {1}: sorted 0(P) 1(Q) 3(P), gaps 1, 2; D = F_P - F_Q = 1/2, -1/2 -> W1 = 1/2 + 1 = 1.5
    order, gaps = np.array([[0, 2, 1], [1, 2, 0]]), np.array([[1.0, 2.0], [2.0, 1.0]])
    per, infl = W.w1_influence(order, gaps, 2, 1)
    np.testing.assert_allclose(per, [1.5, 1.5])
    # influence per point: the sum over later gaps of sign(D) x gap, per direction, averaged over the two
    np.testing.assert_allclose(infl, [(-1 + 0) / 2, (0 + 1) / 2, (-2 - 1) / 2])
    np.testing.assert_allclose(W.w1_from_cdfs(order, gaps, np.array([[0.5, 0.5, -1.0]])), [[1.5, 1.5]])


def test_same_subsample():
    ip, iq = W.same_subsample(np.random.default_rng(0), 5, 5, 10)
    assert ip.tolist() == iq.tolist() == [0, 1, 2, 3, 4]
    ip, iq = W.same_subsample(np.random.default_rng(0), 6, 6, 3)
    assert ip is iq and ip.tolist() == sorted(np.random.default_rng(0).choice(6, 3, replace=False).tolist())
    ip, iq = W.same_subsample(np.random.default_rng(0), 6, 4, 3)
    rng = np.random.default_rng(0)
    assert ip.tolist() == sorted(rng.choice(6, 3, replace=False)) and iq.tolist() == sorted(rng.choice(4, 3, replace=False))
    ip, iq = W.same_subsample(np.random.default_rng(0), 2, 6, 3)
    assert ip.tolist() == [0, 1] and len(iq) == 3


def test_w1_exact_known_transport():
    x = np.array([[0.0, 0.0], [1.0, 0.0]])
    r = W.w1_exact(x, x + [0, 1], bootstrap=0, **_kw())
    assert r.value == pytest.approx(1.0, abs=1e-12) and r.ci == pytest.approx((1.0, 1.0))
    assert (r.n_p, r.n_q, r.estimator) == (2, 2, "exact OT (POT ot.emd2), Euclidean cost")
    assert r.note == ("interval: normal, delta method with the OT dual potentials (no resampling: emd2 is costly); it "
                      "covers the estimator's expectation E W1(P_n, Q_m), not W1(P, Q); bias: W1 between finite samples "
                      "overestimates W1(P, Q); estimated upward bias at P = Q 0 (W1 between random halves of each "
                      "side, scaled by 2^-1/max(d,2)); smaller when P and Q are far apart")
    r = W.w1_exact(np.zeros((3, 1)), np.ones((2, 1)), bootstrap=10, **_kw())
    assert r.value == pytest.approx(1.0) and r.ci[0] <= 1.0 <= r.ci[1] and r.ci[0] >= 0.0


def test_w1_exact_subsample_and_null_bias():
    x = np.array([[0.0], [1.0], [2.0], [6.0], [7.0]])
    r = W.w1_exact(x, x + 2, bootstrap=0, max_points=4, **_kw(5))
    rng = np.random.default_rng(5)
    ip = np.sort(rng.choice(5, 4, replace=False))
    sub = x[ip, 0]
    assert r.value == pytest.approx(2.0, abs=1e-12) and r.n_p == 5
    assert r.note.startswith("exact OT on a seeded subsample of 4 x 4 points (cap 4); interval: normal")
    halves = []
    for z in (sub, sub + 2):
        perm = rng.permutation(4)
        halves.append(stats.wasserstein_distance(z[perm[:2]], z[perm[2:4]]))
    assert f"estimated upward bias at P = Q {np.mean(halves) * 2 ** -0.5:.3g} (W1" in r.note


def test_w1_exact_interval_from_the_dual_potentials():
    x = np.array([[0.0], [1.0], [5.0]])
    y = np.array([[2.0], [3.0]])
    r = W.w1_exact(x, y, bootstrap=1, **_kw())
    import ot
    _, log = ot.emd2(np.full(3, 1 / 3), np.full(2, 1 / 2), ot.dist(x, y, metric="euclidean"), log=True)
    se = math.sqrt(np.var(log["u"]) / 3 + np.var(log["v"]) / 2)
    w = stats.wasserstein_distance(x[:, 0], y[:, 0])
    z = stats.norm.ppf(0.95)
    assert r.value == pytest.approx(w, abs=1e-12) and se > 0
    assert r.ci == pytest.approx((max(w - z * se, 0.0), w + z * se), abs=1e-9)


def _sliced_variance(a, b, theta):
    """The delta-method variance of sliced W1, written out with loops: per direction, sort the pooled projections;
    D_k = F_P - F_Q after the k-th point; a point's influence is the sum over later gaps of sign(D) x gap."""
    n, m, L = len(a), len(b), theta.shape[1]
    pooled = np.concatenate([a, b]) @ theta
    infl, per = np.zeros(n + m), []
    for j in range(L):
        idx = np.argsort(pooled[:, j])
        g = np.diff(pooled[idx, j])
        d = np.cumsum([1 / n if i < n else -1 / m for i in idx])[:-1]
        per.append(sum(abs(d[k]) * g[k] for k in range(n + m - 1)))
        for pos, i in enumerate(idx):
            infl[i] += sum(np.sign(d[k]) * g[k] for k in range(pos, n + m - 1)) / L
    return np.var(infl[:n]) / n + np.var(infl[n:]) / m + np.var(per, ddof=1) / L


def test_sliced_w_of_a_shift():
    x = np.random.default_rng(2).standard_normal((30, 2))
    r = W.sliced_w(x, x + [3.0, 0.0], bootstrap=1, projections=20, **_kw(8))
    import ot
    theta = ot.sliced.get_random_projections(2, 20, seed=int(np.random.default_rng(8).integers(2**31)))
    shifts = np.abs(3.0 * theta[0])  # a shift by (3, 0) moves every projection by 3 theta_1
    assert r.value == pytest.approx(shifts.mean(), abs=1e-9)
    z = stats.norm.ppf(0.95)
    sd = math.sqrt(_sliced_variance(x, x + [3.0, 0.0], theta))
    assert sd > math.sqrt(np.var(shifts, ddof=1) / 20) > 0
    assert r.ci == pytest.approx((max(r.value - z * sd, 0.0), r.value + z * sd), abs=1e-9)
    assert (r.n_p, r.n_q, r.estimator) == (30, 30, "sliced Wasserstein (POT), p=1, 20 projections")
    assert r.note == ("sliced W1: mean over 20 seeded random directions of the 1-D W1 of the projections; interval: "
                      "normal, delta method (influence of each point on the 1-D W1s) plus the spread over directions / L")
    assert W.sliced_w(x, x + [3.0, 0.0], bootstrap=0, projections=20, **_kw(8)).ci == (r.value, r.value)


def test_homogeneous_rescales_huge_points():
    x = np.array([[0.0], [1.0]]) * 1e200
    r = W.w1_1d(x, x + 1e200, bootstrap=0, **_kw())
    s = 2.0 ** math.frexp(2e200)[1]
    assert r.value == pytest.approx(1e200, rel=1e-12) and r.ci == pytest.approx((1e200, 1e200), rel=1e-12)
    assert r.note == f"points divided by {s:.3g} for the computation (figures in this note are in those units); "
    assert r.estimator == "scipy.stats.wasserstein_distance (exact in 1-D)" and (r.n_p, r.n_q) == (2, 2)
    assert W.w1_1d.__name__ == "w1_1d" and W.w1_exact.__name__ == "w1_exact"
    big = np.array([[-8e307, -8e307]])
    with pytest.raises(MetricError, match=r"^w1_exact: the points are too large \(up to 8\.99e\+307\): the distance "
                                          r"overflows float64; rescale them$"):
        W.w1_exact(big, -big, bootstrap=0, **_kw())
    with pytest.raises(MetricError, match="P and Q must have the same dimension"):
        W.w1_exact(np.zeros((2, 2)), np.zeros((2, 3)), bootstrap=0, **_kw())


def test_homogeneous_wrapper_built_per_call():
    """W.homogeneous applied here (the module applies it at import, before a test can change it): ordinary points
    reach the function as they are; huge ones divided by a power of two, the value and interval multiplied back."""
    from ganserve.metrics.results import Result

    seen = []

    def fake(a, b, **kw):
        seen.append((a.copy(), b.copy(), kw))
        return Result(2.0, (1.0, 3.0), len(a), len(b), "inner note", "est")

    run = W.homogeneous(fake)
    assert run.__name__ == "fake"
    r = run([[1.0], [2.0]], [[3.0]], k=5)
    assert (r.value, r.ci, r.n_p, r.n_q, r.note) == (2.0, (1.0, 3.0), 2, 1, "inner note")
    assert seen[0][0].tolist() == [[1.0], [2.0]] and seen[0][1].tolist() == [[3.0]] and seen[0][2] == {"k": 5}
    r = run([[3e200]], [[-1e100]])
    s = 2.0 ** math.frexp(3e200)[1]
    assert seen[1][0].tolist() == [[3e200 / s]] and seen[1][1].tolist() == [[-1e100 / s]]
    assert (r.value, r.ci, r.n_p, r.n_q, r.estimator) == (2.0 * s, (1.0 * s, 3.0 * s), 1, 1, "est")
    assert r.note == f"points divided by {s:.3g} for the computation (figures in this note are in those units); inner note"
    with pytest.raises(MetricError, match=r"^fake: the points are too large \(up to 8\.99e\+307\): the distance "
                                          r"overflows float64; rescale them$"):
        run([[8e307]], [[1.0]])  # 2.0 x 2^1023 overflows
    with pytest.raises(MetricError, match="P and Q must have the same dimension"):
        run([[1.0]], [[1.0, 2.0]])


def test_pot_is_imported_without_its_heavy_backends(monkeypatch):
    for lib in ("PYTORCH", "JAX", "CUPY", "TENSORFLOW"):
        monkeypatch.delenv(f"POT_BACKEND_DISABLE_{lib}", raising=False)
    import os

    assert W._ot().__name__ == "ot"
    assert {lib: os.environ.get(f"POT_BACKEND_DISABLE_{lib}") for lib in ("PYTORCH", "JAX", "CUPY", "TENSORFLOW")} \
        == {"PYTORCH": "1", "JAX": "1", "CUPY": "1", "TENSORFLOW": "1"}


def test_null_bias_with_odd_sides_and_no_subsample_draw_at_the_cap():
    """Five points a side (halves of 2 and 2, one point left out), exactly at the cap (so no subsample is drawn):
    the note's bias is the mean W1 between the halves, replayed with the same generator."""
    x = np.array([[0.0], [1.0], [2.0], [6.0], [7.0]])
    y = x * 2 + 1
    r = W.w1_exact(x, y, bootstrap=0, max_points=5, **_kw(11))
    rng = np.random.default_rng(11)
    halves = []
    for z in (x[:, 0], y[:, 0]):
        perm = rng.permutation(5)
        halves.append(stats.wasserstein_distance(z[perm[:2]], z[perm[2:4]]))
    assert f"estimated upward bias at P = Q {np.mean(halves) * 2 ** -0.5:.3g} (W1" in r.note
    assert "subsample" not in r.note


def test_homogeneous_scales_by_both_sides_and_passes_the_options():
    from ganserve.metrics.results import Result

    seen = []

    def fake(a, b, **kw):
        seen.append((a.copy(), b.copy(), kw))
        return Result(1.0, (1.0, 1.0), len(a), len(b), "n", "e")

    run = W.homogeneous(fake)
    r = run([[1.0]], [[3e200]], k=7)
    s = 2.0 ** math.frexp(3e200)[1]
    assert seen[0][1].tolist() == [[3e200 / s]] and seen[0][0].tolist() == [[1.0 / s]] and seen[0][2] == {"k": 7}
    assert r.value == s
    with pytest.raises(MetricError, match="^P: metric fake needs points of shape"):
        run(np.zeros((2, 2, 2)), [[1.0]])


def test_null_bias_transport_runs_to_optimality():
    """Halves of 30 points in 2-D: the transport needs more simplex iterations than a small cap would allow."""
    import ot

    x = np.random.default_rng(12).standard_normal((60, 2))
    r = W.w1_exact(x, x + 0.5, bootstrap=0, **_kw(13))
    rng = np.random.default_rng(13)
    halves = []
    for z in (x, x + 0.5):
        perm = rng.permutation(60)
        u, v = z[perm[:30]], z[perm[30:60]]
        w = np.full(30, 1 / 30)
        halves.append(ot.emd2(w, w, ot.dist(u, v, metric="euclidean"), numItermax=10**9))
    assert f"estimated upward bias at P = Q {np.mean(halves) * 2 ** -0.5:.3g} (W1" in r.note


def test_only_the_side_over_the_cap_is_subsampled():
    """P has 6 points (over the cap of 5: a seeded subsample), Q exactly 5 (no draw): the bias note replays the
    generator's draws in that order."""
    x = np.array([[0.0], [1.0], [2.0], [6.0], [7.0], [9.0]])
    y = np.array([[0.5], [3.0], [4.0], [8.0], [10.0]])
    r = W.w1_exact(x, y, bootstrap=0, max_points=5, **_kw(21))
    rng = np.random.default_rng(21)
    sub = x[np.sort(rng.choice(6, 5, replace=False)), 0]
    halves = []
    for z in (sub, y[:, 0]):
        perm = rng.permutation(5)
        halves.append(stats.wasserstein_distance(z[perm[:2]], z[perm[2:4]]))
    assert r.note.startswith("exact OT on a seeded subsample of 5 x 5 points (cap 5)")
    assert f"estimated upward bias at P = Q {np.mean(halves) * 2 ** -0.5:.3g} (W1" in r.note
