"""The histogram divergences, the shared intervals and W1 (ganserve/metrics/histogram.py, intervals.py,
wasserstein.py) called directly with small seeded inputs and known answers written out by hand: closed forms,
exact 1-D transport, and seeded replays of the documented algorithms. histogram_metric is called per test (not
through the registry's closures built at import), so what it builds is what is tested. Fast: no bootstrap over
more than a few hundred replicates, no transport over more than a few points."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ganserve.metrics import histogram as H
from ganserve.metrics import intervals as C
from ganserve.metrics import wasserstein as W
from ganserve.metrics.results import LOG2, MetricError

L43 = math.log(4 / 3)


def _run(name, p, q, *, seed=0, bootstrap=0, confidence=0.9, **kw):
    return H.histogram_metric(name)(p, q, rng=np.random.default_rng(seed), boot_rng=np.random.default_rng(seed + 1),
                                    bootstrap=bootstrap, confidence=confidence, **kw)


# -- histogram.py ---------------------------------------------------------------------------------------------

def test_row_divergences_known_values():
    p, q = np.array([1.0, 0.0]), np.array([0.5, 0.5])
    assert H.kl_rows(p, q) == pytest.approx(LOG2, abs=1e-15)
    assert H.kl_rows(q, p) == math.inf
    assert H.js_rows(p, q) == pytest.approx(0.75 * L43, abs=1e-15)  # a known intermediate value
    assert H.js_rows(p, np.array([0.0, 1.0])) == LOG2                 # disjoint: exactly log 2 (clipped)
    assert H.tv_rows(p, q) == 0.5 and H.tv_rows(np.array([0.2, 0.8]), np.array([0.6, 0.4])) == pytest.approx(0.4)
    rows = np.array([[1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_allclose(H.kl_rows(rows, q), [LOG2, 0.0], atol=1e-15)  # along the last axis
    np.testing.assert_allclose(H.js_rows(rows, q), [0.75 * L43, 0.0], atol=1e-15)
    np.testing.assert_allclose(H.tv_rows(rows, q), [0.5, 0.0])
    pp, qq = np.array([0.75, 0.25]), np.array([0.5, 0.5])
    assert H.HIST_FUNCS["kl_pq"](pp, qq) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-15)
    assert H.HIST_FUNCS["kl_qp"](pp, qq) == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2), abs=1e-15)
    assert H.HIST_FUNCS["js_bits"](p, q) == pytest.approx(0.75 * L43 / LOG2, abs=1e-15)
    assert H.HIST_FUNCS["js"] is H.js_rows and H.HIST_FUNCS["tv"] is H.tv_rows


def test_bin_names():
    assert H._bin_names(np.array([0, 2]), None) == "0, 2"
    assert H._bin_names(np.array([1]), ["a", "b"]) == "b"
    assert H._bin_names(np.arange(14), None) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ... (14 bins)"
    assert H._bin_names(np.arange(12), None) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11"


@pytest.mark.parametrize("name, want", [("kl_pq", 0.75 * math.log(1.5) + 0.25 * math.log(0.5)),
                                        ("kl_qp", 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2)),
                                        ("tv", 0.25)])
def test_histogram_metric_value_counts_and_no_interval(name, want):
    r = _run(name, [3, 1], [5, 5])
    assert r.value == pytest.approx(want, abs=1e-15) and r.ci == (r.value, r.value)
    assert (r.n_p, r.n_q, r.note) == (4, 10, "no interval (bootstrap=0)")
    r = _run(name, [0.75, 0.25], [0.5, 0.5], bootstrap=50, p_exact=True, q_exact=True)
    assert r.value == pytest.approx(want, abs=1e-15) and r.ci == (r.value, r.value)
    assert (r.n_p, r.n_q, r.note) == (0, 0, "no interval: both sides exact")


def test_histogram_metric_bootstrap_replays_the_multinomial_resampling():
    cp, cq = np.array([30.0, 10.0, 0.0]), np.array([20.0, 15.0, 5.0])
    r = _run("tv", cp, cq, seed=4, bootstrap=300, confidence=0.8)
    boot = np.random.default_rng(5)
    bp = boot.multinomial(40, cp / 40, size=300) / 40
    bq = boot.multinomial(40, cq / 40, size=300) / 40
    reps = np.sort(0.5 * np.abs(bp - bq).sum(1))
    value = 0.5 * np.abs(cp / 40 - cq / 40).sum()
    assert r.value == pytest.approx(value, abs=1e-15)
    assert r.ci == (min(reps[int(math.floor(0.1 * 299))], value), max(reps[int(math.ceil(0.9 * 299))], value))
    assert r.ci[0] < value < r.ci[1] and (r.n_p, r.n_q) == (40, 40)
    assert r.note == "interval: percentile bootstrap, 300 resamples of the counts (multinomial), seeded"
    exact_q = _run("tv", cp, cq / 40, seed=4, bootstrap=300, confidence=0.8, q_exact=True)
    boot = np.random.default_rng(5)
    reps = np.sort(0.5 * np.abs(boot.multinomial(40, cp / 40, size=300) / 40 - cq / 40).sum(1))
    assert exact_q.ci == (min(reps[29], value), max(reps[270], value)) and exact_q.n_q == 0 and exact_q.n_p == 40
    exact_p = _run("tv", cp / 40, cq, seed=4, bootstrap=300, confidence=0.8, p_exact=True)
    boot = np.random.default_rng(5)
    reps = np.sort(0.5 * np.abs(cp / 40 - boot.multinomial(40, cq / 40, size=300) / 40).sum(1))
    assert exact_p.ci == (min(reps[29], value), max(reps[270], value)) and exact_p.n_p == 0 and exact_p.n_q == 40


def test_infinite_kl_names_the_empty_bins():
    r = _run("kl_pq", [2, 1, 1], [2, 0, 0], labels=["zero", "one", "two"])
    assert r.value == math.inf and r.ci == (math.inf, math.inf)
    assert r.note == ("+inf: Q has zero count in bin(s) [one, two] where P has mass (plug-in estimate: the true value "
                      "may be finite if Q's mass there is only unobserved); no interval (bootstrap=0)")
    r = _run("kl_qp", [2, 0, 0], [2, 1, 1])
    assert r.value == math.inf and r.note.startswith("+inf: P has zero count in bin(s) [1, 2] where Q has mass "
                                                     "(plug-in estimate: the true value may be finite if P's mass")
    assert _run("kl_qp", [2, 1, 1], [2, 0, 0]).note == "no interval (bootstrap=0)"  # finite that way round
    assert _run("js", [2, 1, 1], [2, 0, 0]).note == "no interval (bootstrap=0)"


def test_histogram_metric_refusals():
    with pytest.raises(MetricError, match=r"^P and Q histograms must have the same number of bins: 2 vs 3$"):
        _run("js", [1, 1], [1, 1, 1])
    with pytest.raises(MetricError, match=r"^labels: 1 names for 2 bins$"):
        _run("js", [1, 1], [1, 1], labels=["a"])
    with pytest.raises(MetricError, match="Q: histogram counts must be whole numbers"):
        _run("js", [1, 1], [0.5, 0.5])


def test_class_helpers():
    np.testing.assert_array_equal(H.class_histogram([0, 2, 2], 4), [1, 0, 2, 0])
    assert H.class_histogram([], 2).tolist() == [0, 0] and H.class_histogram([1], 2).dtype == np.int64
    for labels, k, msg in (([[0]], 2, r"labels must be a vector \(N,\), got shape \(1, 1\)"),
                           ([0], 0, "num_classes must be >= 1, got 0"), ([2], 2, r"labels must be integers in 0..1"),
                           ([-1], 2, "labels must be integers in 0..1"), ([0.5], 2, "labels must be integers in 0..1")):
        with pytest.raises(MetricError, match=f"^{msg}$"):
            H.class_histogram(labels, k)
    assert H.classes_covered([0, 1, 5, 2]) == 3 and H.classes_covered([0, 1, 5, 2], min_count=2) == 2
    acc, per = H.conditional_accuracy([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], 3)
    assert acc == pytest.approx(0.6) and per[0] == 0.5 and per[1] == pytest.approx(2 / 3) and math.isnan(per[2])
    for r, p in (([0, 1], [0]), ([], []), ([[0]], [[0]])):
        with pytest.raises(MetricError, match="requested and predicted must be non-empty vectors of one length"):
            H.conditional_accuracy(r, p, 2)
    with pytest.raises(MetricError, match="labels must be integers in 0..1"):
        H.conditional_accuracy([0, 1], [0, 2], 2)


# -- intervals.py ---------------------------------------------------------------------------------------------

def test_percentile_ci_nearest_rank():
    reps = np.arange(101, dtype=float)[::-1]  # unsorted on purpose
    assert C.percentile_ci(reps, 50, 0.5) == (25.0, 75.0)                 # ranks 0.25 x 100 and 0.75 x 100
    assert C.percentile_ci(np.arange(10.0), 4, 0.5) == (2.0, 7.0)         # floor(0.25 x 9) = 2, ceil(0.75 x 9) = 7
    assert C.percentile_ci(np.arange(5.0), 2, 0.5) == (1.0, 3.0)          # floor(1.0) = 1, ceil(3.0) = 3
    assert C.percentile_ci(reps, -1, 0.5) == (-1, 75.0) and C.percentile_ci(reps, 99, 0.5) == (25.0, 99)
    assert C.percentile_ci([np.nan, 1.0, np.nan, 3.0], 2, 0.5) == (1.0, 3.0)
    assert C.percentile_ci([np.nan], 2.5, 0.5) == (2.5, 2.5) and C.percentile_ci([], 1, 0.5) == (1, 1)
    assert C.percentile_ci([1.0, np.inf, np.inf], 1.0, 0.5) == (1.0, math.inf)


def test_normal_ci():
    z = 1.959963984540054
    lo, hi = C.normal_ci(1.0, 0.5, 0.95)
    assert lo == pytest.approx(1 - 0.5 * z, abs=1e-12) and hi == pytest.approx(1 + 0.5 * z, abs=1e-12)
    assert C.normal_ci(math.inf, 1.0, 0.95) == (math.inf, math.inf)
    assert C.normal_ci(2.0, 0.0, 0.5) == (2.0, 2.0)


def test_boot_mean_and_resample_counts_replay_their_draws():
    terms = np.array([1.0, 2.0, 4.0, 8.0])
    got = C.boot_mean(terms, np.random.default_rng(3), 7)
    want = terms[np.random.default_rng(3).integers(0, 4, size=(7, 4))].mean(1)
    np.testing.assert_array_equal(got, want)
    n = (1 << 22) // 3 + 1  # a block of 2 rows: the draws go in blocks of (2, n), (2, n), (1, n)
    big = np.zeros(n)
    big[0] = n
    rng = np.random.default_rng(1)
    want = np.concatenate([big[rng.integers(0, n, size=(k, n))].mean(1) for k in (2, 2, 1)])
    np.testing.assert_array_equal(C.boot_mean(big, np.random.default_rng(1), 5), want)
    counts = np.array([3.0, 0.0, 1.0])
    got = C.resample_counts(np.random.default_rng(2), counts, 6)
    np.testing.assert_array_equal(got, np.random.default_rng(2).multinomial(4, [0.75, 0, 0.25], size=6) / 4)
    np.testing.assert_allclose(got.sum(1), 1.0)
    np.testing.assert_array_equal(got[:, 1], 0)


def test_clip_to_a_known_range():
    notes = ["x"]
    assert C.clip(0.5, (-0.2, 0.9), 0.0, LOG2, notes) == (0.5, (0.0, LOG2)) and notes == ["x"]
    assert C.clip(0.0, (0.0, 0.1), 0.0, 1.0, notes) == (0.0, (0.0, 0.1)) and notes == ["x"]
    assert C.clip(-0.05, (-0.3, 0.2), 0.0, 1.0, notes) == (0.0, (0.0, 0.2))
    assert notes == ["raw estimate -0.05 is outside [0, 1] (estimator bias/noise), clipped", "x"]
    assert C.clip(1.25, (1.1, 1.4), 0.0, 1.0, []) == (1.0, (1.0, 1.0))
    assert C.clip(1.0, (0.5, 1.4), 0.0, 1.0, []) == (1.0, (0.5, 1.0))  # the value on the edge: the interval clipped


def test_boot_note():
    assert C.boot_note(200) == "interval: percentile bootstrap, 200 resamples of the points, seeded"
    assert C.boot_note(5, "counts") == "interval: percentile bootstrap, 5 resamples of the counts, seeded"


def test_split_ci_replays_disjoint_groups():
    a = np.arange(40, dtype=float)[:, None] ** 1.5
    b = np.arange(30, dtype=float)[:, None]

    def est(x, y):
        return float(x.mean() - y.mean())

    ci, note = C.split_ci(est, a, b, 2.0, np.random.default_rng(6), 0.9, 3)
    rng = np.random.default_rng(6)
    pa, pb = rng.permutation(40), rng.permutation(30)
    vals = [est(a[np.sort(i)], b[np.sort(j)]) for i, j in zip(np.array_split(pa, 10), np.array_split(pb, 10))]
    half = stats.t.ppf(0.95, 9) * np.std(vals, ddof=1) / math.sqrt(10)
    assert ci == pytest.approx((2.0 - half, 2.0 + half), abs=1e-12) and half > 0
    assert note == "interval: Student-t, variance from 10 disjoint random groups of ~4 points (var / 10), seeded"
    ci, note = C.split_ci(est, a[:12], a[:12], 1.0, np.random.default_rng(6), 0.9, 4)  # 3 groups, paired
    rng = np.random.default_rng(6)
    pa = rng.permutation(12)
    vals = [est(a[:12][np.sort(i)], a[:12][np.sort(i)]) for i in np.array_split(pa, 3)]
    assert vals == [0.0, 0.0, 0.0] and ci == (1.0, 1.0)
    assert note == "interval: Student-t, variance from 3 disjoint random groups of ~4 points (var / 3), seeded"
    assert C.split_ci(est, a[:7], b, 1.5, np.random.default_rng(0), 0.9, 4) == (
        (1.5, 1.5), "no interval: too few points for 4-point groups")
    assert C.split_ci(est, a[:8], b, 1.5, np.random.default_rng(0), 0.9, 4)[0] != (1.5, 1.5)


def _bias(x, y):
    """A statistic whose bias is exactly 1/n: the extrapolation to n = inf recovers 1."""
    return 1.0 + 1.0 / len(x)


def test_extrapolated_recovers_a_power_law_bias():
    x = np.zeros((64, 1))
    value, plain, levels = C.extrapolated(_bias, x, x, np.random.default_rng(0), 4)
    assert (plain, levels) == (1 + 1 / 64, 5) and value == pytest.approx(1.0, abs=1e-12)
    value, plain, levels = C.extrapolated(_bias, x, np.zeros((50, 1)), np.random.default_rng(0), 4)
    assert levels == 4 and value == pytest.approx(1.0, abs=1e-12)
    value, plain, levels = C.extrapolated(_bias, x, x, np.random.default_rng(0), 32)  # two levels: a = 1/3 only
    c = (1 / 64) / (2 ** (1 / 3) - 1)
    assert levels == 2 and value == pytest.approx(1 + 1 / 64 - c, abs=1e-12)
    assert C.extrapolated(_bias, x, x, np.random.default_rng(0), 33) == (1 + 1 / 64, 1 + 1 / 64, 1)
    assert C.extrapolated(_bias, x, x, np.random.default_rng(0), 64) == (1 + 1 / 64, 1 + 1 / 64, 1)


def test_extrapolation_note():
    assert C.extrapolation_note(1.5, 1.5, 1) == ("too few points to correct the bias: plain estimate (biased low when "
                                                 "Q is sparse where P has mass)")
    assert C.extrapolation_note(1.25, 1.0, 3) == (
        "bias-corrected: the plain estimate 1.25 at n, n/2, ..., n/4 extrapolated to n = inf with a fitted bias "
        "~ n^-a, a in [1/3, 1]; estimated bias of the plain estimate +0.25")


def test_half_sample_ci_scales_the_spread_of_half_samples():
    x = np.random.default_rng(9).standard_normal((40, 1))
    y = np.random.default_rng(10).standard_normal((30, 1)) + 1

    def stat(a, b):
        return float(b.mean() - a.mean())

    ci, note = C.half_sample_ci(stat, x, y, 1.0, np.random.default_rng(7), 0.9, 100)  # 100: one level, plain
    rng = np.random.default_rng(7)
    vals = []
    for _ in range(16):
        ix = np.sort(rng.choice(40, 20, replace=False))
        iy = np.sort(rng.choice(30, 15, replace=False))
        vals.append(stat(x[ix], y[iy]))
    half = stats.t.ppf(0.95, 15) * np.std(vals, ddof=1) / math.sqrt(2 ** 0.5 - 1)
    assert ci == pytest.approx((1.0 - half, 1.0 + half), abs=1e-12)
    assert note == ("interval: Student-t (15 df), standard error from 16 random half-samples scaled for sd ~ n^-0.25 "
                    "(measured); calibrated to cover the true value")
    assert C.half_sample_ci(_bias, x, x, 2.0, np.random.default_rng(7), 0.9, 100)[0] == (2.0, 2.0)


# -- wasserstein.py -------------------------------------------------------------------------------------------

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
