"""The histogram divergences and the shared intervals (ganserve/metrics/histogram.py, intervals.py) called directly
with small seeded inputs and known answers written out by hand: closed forms and seeded replays of the documented
algorithms. histogram_metric is called per test (not through the registry's closures built at import), so what it
builds is what is tested. Fast: no bootstrap over more than a few hundred replicates. W1: test_metrics_w1.py."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats

from ganserve.metrics import histogram as H
from ganserve.metrics import intervals as C
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


def _tv_replay(value, d, h, kink, confidence):
    """TV's interval written out: for the kink-aware law (|h| in the kink bins, sign(d) h elsewhere) and the
    linearised one (sign(d) h everywhere), [value - q_hi, value - q_lo] with nearest-rank quantiles widened to
    hold 0; their union, clipped to [0, 1]."""
    a = (1 - confidence) / 2
    los, his = [], []
    for at_kink in (kink, np.zeros(3, bool)):
        law = np.sort(0.5 * np.where(at_kink, np.abs(h), np.sign(d) * h).sum(1))
        q_lo, q_hi = min(law[int(math.floor(a * 299))], 0.0), max(law[int(math.ceil((1 - a) * 299))], 0.0)
        los.append(value - q_hi)
        his.append(value - q_lo)
    return max(min(los), 0.0), min(max(his), 1.0)


def test_histogram_metric_bootstrap_replays_the_multinomial_resampling():
    # TV: d = p - q = [0.25, -0.125, -0.125]; sd of d_k = sqrt(p(1-p)/40 + q(1-q)/40) = [0.105, 0.103, 0.052]:
    # only bin 1 is within 2 sd of p_k = q_k (the kink), whichever side is exact.
    cp, cq = np.array([30.0, 10.0, 0.0]), np.array([20.0, 15.0, 5.0])
    d, kink = cp / 40 - cq / 40, np.array([False, True, False])
    value = 0.5 * np.abs(d).sum()
    r = _run("tv", cp, cq, seed=4, bootstrap=300, confidence=0.8)
    boot = np.random.default_rng(5)
    bp = boot.multinomial(40, cp / 40, size=300) / 40
    bq = boot.multinomial(40, cq / 40, size=300) / 40
    assert r.value == pytest.approx(value, abs=1e-15)
    assert r.ci == pytest.approx(_tv_replay(value, d, (bp - bq) - d, kink, 0.8), abs=1e-15)
    assert r.ci[0] < value < r.ci[1] and (r.n_p, r.n_q) == (40, 40)
    assert r.note == ("interval: bootstrap of TV's directional derivative (Fang & Santos 2019; kink-aware where "
                      "p_k ~ q_k), 300 multinomial resamples of the counts, seeded; covers the true value")
    exact_q = _run("tv", cp, cq / 40, seed=4, bootstrap=300, confidence=0.8, q_exact=True)
    boot = np.random.default_rng(5)
    h = boot.multinomial(40, cp / 40, size=300) / 40 - cp / 40
    assert exact_q.ci == pytest.approx(_tv_replay(value, d, h, kink, 0.8), abs=1e-15)
    assert exact_q.n_q == 0 and exact_q.n_p == 40
    exact_p = _run("tv", cp / 40, cq, seed=4, bootstrap=300, confidence=0.8, p_exact=True)
    boot = np.random.default_rng(5)
    h = cq / 40 - boot.multinomial(40, cq / 40, size=300) / 40
    assert exact_p.ci == pytest.approx(_tv_replay(value, d, h, kink, 0.8), abs=1e-15)
    assert exact_p.n_p == 0 and exact_p.n_q == 40


def test_kl_interval_is_the_percentile_interval_shifted_by_twice_the_bootstrap_bias():
    cp, cq = np.array([30.0, 10.0, 10.0]), np.array([20.0, 15.0, 15.0])
    value = float(np.sum(cp / 50 * np.log((cp / 50) / (cq / 50))))
    r = _run("kl_pq", cp, cq, seed=4, bootstrap=300, confidence=0.8)
    boot = np.random.default_rng(5)
    bp = boot.multinomial(50, cp / 50, size=300) / 50
    bq = boot.multinomial(50, cq / 50, size=300) / 50
    reps = (bp * np.log(bp / bq)).sum(1)
    bias = reps.mean() - value
    shifted = np.sort(reps - 2 * bias)
    assert bias > 0 and r.value == pytest.approx(value, abs=1e-15)
    assert r.ci == pytest.approx((max(min(shifted[29], value - bias), 0.0), max(shifted[270], value)), abs=1e-15)
    assert f"shifted by the bootstrap bias estimate ({bias:+.3g}: the plug-in's estimated bias)" in r.note


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
    t24 = 2.0638985616280245  # Student-t, 24 degrees of freedom, 97.5% quantile
    lo, hi = C.normal_ci(1.0, 0.5, 0.95, df=24)
    assert lo == pytest.approx(1 - 0.5 * t24, abs=1e-12) and hi == pytest.approx(1 + 0.5 * t24, abs=1e-12)
    assert C.normal_ci(-math.inf, 1.0, 0.95, df=3) == (-math.inf, -math.inf)


def test_bias_corrected_ci():
    """The percentile interval of replicates shifted by twice the bootstrap bias (mean - value), widened to hold
    value - bias and value; NaN replicates dropped; an infinite replicate or value: plain percentile, bias NaN."""
    assert C.bias_corrected_ci([5.0, 1.0, 3.0, 2.0, 4.0], 2.0, 0.5) == ((0.0, 2.0), 1.0)  # bias 1: ranks of -1..3
    assert C.bias_corrected_ci([10.0, 10.0, 10.0], 4.0, 0.9) == ((-2.0, 4.0), 6.0)      # widened to hold value
    assert C.bias_corrected_ci([np.nan, 1.0, 3.0], 2.0, 0.5) == ((1.0, 3.0), 0.0)
    ci, bias = C.bias_corrected_ci([1.0, np.inf, 2.0], 1.5, 0.5)
    assert ci == (1.0, math.inf) and math.isnan(bias)
    ci, bias = C.bias_corrected_ci([], 1.5, 0.5)
    assert ci == (1.5, 1.5) and math.isnan(bias)
    ci, bias = C.bias_corrected_ci([1.0, 2.0], math.inf, 0.5)
    assert ci == (1.0, math.inf) and math.isnan(bias)
    reps32 = np.float32([0.1, 0.2, 0.7, 0.4, 0.33])  # float32 replicates are averaged in float64
    assert C.bias_corrected_ci(reps32, 0.3, 0.5) == C.bias_corrected_ci(reps32.astype(np.float64), 0.3, 0.5)


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


def test_histogram_edges():
    """JS clipped to [0, log 2] where rounding leaves it (two written-out cases), no warnings from 0 log 0, 13 bins
    named in full, one class, a one-sided exact histogram with no bootstrap, one resample, the sides' names."""
    import warnings

    p = np.array([0.0, 0.04796467437556122, 0.0, 0.9520353256244388, 0.0])
    q = np.array([0.3085455251398442, 0.0, 0.27649714238946616, 0.0, 0.4149573324706897])
    assert H.js_rows(p, q) == LOG2  # disjoint: log 2 + 1.1e-16 before the clip
    a = np.array([0.2572918415671708, 0.2963815343236757, 0.07215314639333595, 0.30213040936689234,
                  0.07204306834892518])
    b = np.array([0.2572918418246329, 0.29638153404202844, 0.07215314646808432, 0.30213040939753977,
                  0.0720430682677148])
    assert H.js_rows(a, b) == 0.0  # -1.5e-17 before the clip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert H.kl_rows(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0   # 0 log 0 = 0, silently
        assert H.kl_rows(np.array([0.5, 0.5]), np.array([0.0, 1.0])) == math.inf
    assert H._bin_names(np.arange(13), None) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ... (13 bins)"
    np.testing.assert_array_equal(H.class_histogram([0, 0], 1), [2])
    r = _run("tv", [3, 1], [0.5, 0.5], q_exact=True)
    assert r.note == "no interval (bootstrap=0)" and (r.n_p, r.n_q) == (4, 0)
    r = _run("tv", [3, 1], [5, 5], bootstrap=1)
    assert r.note == ("interval: bootstrap of TV's directional derivative (Fang & Santos 2019; kink-aware where "
                      "p_k ~ q_k), 1 multinomial resamples of the counts, seeded; covers the true value")
    assert r.ci[0] <= r.value <= r.ci[1]
    r = _run("kl_pq", [2, 1, 0], [2, 0, 0])
    assert r.note.startswith("+inf: Q has zero count in bin(s) [1] where P has mass")
    for p_, q_, msg in (([[1, 1]], [1, 1], "P: metric js takes a histogram"),
                        ([1, 1], [[1, 1]], "Q: metric js takes a histogram"),
                        ([1.5, 1], [1, 1], "P: histogram counts must be whole numbers")):
        with pytest.raises(MetricError, match=f"^{re.escape(msg)}"):
            _run("js", p_, q_)
    acc, per = H.conditional_accuracy([0, 1, 1, 2], [0, 1, 0, 1], 3)
    assert acc == 0.5 and per.tolist() == [1.0, 0.5, 0.0]  # classes requested once count too


def test_interval_edges():
    assert C.percentile_ci([1.0, 2.0, 3.0], 2.0, 0.5) == (1.0, 3.0)  # ranks floor(0.5) = 0 and ceil(1.5) = 2
    notes = []
    assert C.clip(1.0, (0.5, 1.4), 0.0, 1.0, notes) == (1.0, (0.5, 1.0)) and notes == []  # on the edge: inside
    assert C.extrapolation_note(1.5, 1.25, 2) == (
        "bias-corrected: the plain estimate 1.5 at n, n/2, ..., n/2 extrapolated to n = inf with a fitted bias "
        "~ n^-a, a in [1/3, 1]; estimated bias of the plain estimate +0.25")
    assert "n, n/2, ..., n/8 extrapolated" in C.extrapolation_note(1.5, 1.25, 4)
    a, b = np.arange(40.0)[:, None], np.arange(40.0)[:, None] ** 2

    def est(x, y):
        return float(x.mean() - y.mean())

    for nb, groups in ((40, 10), (20, 6)):  # at most 10 groups; fewer when Q is short (20 // 3 = 6)
        ci, note = C.split_ci(est, a, b[:nb], 0.0, np.random.default_rng(1), 0.9, 3)
        assert note.startswith(f"interval: Student-t, variance from {groups} disjoint random groups")


def _diff_stat(x, y):
    return float(x.mean() - y.mean())


def test_extrapolation_pairs_equal_sizes_and_fits_one_exponent_below_four_levels():
    x = np.random.default_rng(3).standard_normal((64, 1))
    assert C.extrapolated(_diff_stat, x, x.copy(), np.random.default_rng(0), 4) == (0.0, 0.0, 5)  # paired halves
    value, plain, levels = C.extrapolated(_bias, x, x, np.random.default_rng(0), 16)  # 3 levels: a = 1/3 only
    design = np.stack([np.ones(3), (2.0 ** np.arange(3)) ** (1 / 3)], 1)
    means = [1 + 1 / 64, 1 + 2 / 64, 1 + 4 / 64]
    assert levels == 3 and value == pytest.approx(np.linalg.lstsq(design, means, rcond=None)[0][0], abs=1e-12)


def test_half_samples_are_paired_and_use_the_corrected_estimate():
    x = np.random.default_rng(4).standard_normal((48, 1))
    assert C.half_sample_ci(_diff_stat, x, x.copy(), 0.5, np.random.default_rng(2), 0.9, 4)[0] == (0.5, 0.5)
    y = np.random.default_rng(5).standard_normal((40, 1))

    def stat(a, b):  # a bias that depends on the data, so the corrected and the plain estimates spread differently
        return float(a.mean() - b.mean() + np.abs(a).max() / len(a))

    ci, _ = C.half_sample_ci(stat, x, y, 0.0, np.random.default_rng(2), 0.9, 4)
    rng = np.random.default_rng(2)
    vals = []
    for _ in range(16):
        ix = np.sort(rng.choice(48, 24, replace=False))
        iy = np.sort(rng.choice(40, 20, replace=False))
        vals.append(C.extrapolated(stat, x[ix], y[iy], rng, 4)[0])
    half = stats.t.ppf(0.95, 15) * np.std(vals, ddof=1) / math.sqrt(2 ** 0.5 - 1)
    assert ci == pytest.approx((-half, half), abs=1e-12)
