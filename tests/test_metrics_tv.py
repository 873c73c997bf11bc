"""TV's kink-aware interval (ganserve/metrics/histogram.py tv_ci) at its edges, written out by hand: bins exactly at
the kink (d_k = 0, a tie counted on the + side), a bin exactly KINK_Z standard errors away, and counts whose
per-bin variance (both sides, or the non-exact side only) decides which bins sit at the kink; and the KL note when
the bootstrap bias cannot be estimated."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ganserve.metrics import histogram as H


def _written_out(pp, qq, h, var, value, confidence):
    """The documented algorithm with loops: kink bins |d_k| <= 2 sd_k; law = 1/2 sum phi_k(h_k) with phi = |h| at
    the kink and sign(d) h elsewhere (+h on a tie); nearest-rank quantiles widened to hold 0; the union of the
    kink-aware and the linearised intervals."""
    d = pp - qq
    kink = [abs(d[k]) <= 2.0 * math.sqrt(var[k]) for k in range(len(d))]
    a, n = (1 - confidence) / 2, len(h)
    ends = []
    for use_kink in (True, False):
        law = sorted(0.5 * sum(abs(row[k]) if use_kink and kink[k] else (-row[k] if d[k] < 0 else row[k])
                               for k in range(len(d))) for row in h)
        q_lo = min(law[int(math.floor(a * (n - 1)))], 0.0)
        q_hi = max(law[int(math.ceil((1 - a) * (n - 1)))], 0.0)
        ends.append((value - q_hi, value - q_lo))
    return min(e[0] for e in ends), max(e[1] for e in ends)


H_ROWS = np.array([[0.1, 0.05], [-0.2, 0.1], [0.05, 0.0], [0.3, -0.1], [-0.1, -0.1]])


def test_tied_bins_sit_at_the_kink_and_count_on_the_plus_side():
    pp = qq = np.array([0.5, 0.5])
    bp = pp + H_ROWS / 2
    bq = qq - H_ROWS / 2  # h = bp - bq - d = H_ROWS
    var = np.array([0.01, 0.01])
    got = H.tv_ci(pp, qq, bp, bq, var, 0.0, 0.5)
    assert got == pytest.approx(_written_out(pp, qq, H_ROWS, var, 0.0, 0.5), abs=1e-15)
    # kink-aware law 1/2 (|h1| + |h2|): ranks 1 and 3 of [0.025 .. 0.2] -> (-0.15, 0); linearised, ties counted
    # as +h: 1/2 (h1 + h2), ranks 1 and 3 of [-0.1, -0.05, 0.025, 0.075, 0.1] -> (-0.075, 0.05); the union:
    assert got == pytest.approx((-0.15, 0.05), abs=1e-15)


def test_a_bin_exactly_two_standard_errors_away_is_at_the_kink():
    pp, qq = np.array([0.75, 0.25]), np.array([0.25, 0.75])  # d = +-0.5 exactly
    var = np.array([0.0625, 0.0625])  # sd 0.25: |d| = 2 sd exactly
    h = np.array([[0.2, -0.1], [-0.3, 0.1], [0.1, 0.1], [-0.1, -0.2], [0.0, 0.3]])
    got = H.tv_ci(pp, qq, pp + h, qq + 0 * h, var, 0.5, 0.5)
    assert got == pytest.approx(_written_out(pp, qq, h, var, 0.5, 0.5), abs=1e-15)
    assert got != pytest.approx(_written_out(pp, qq, h, var * 0.99, 0.5, 0.5), abs=1e-15)  # the edge matters here


@pytest.mark.parametrize("p_exact, q_exact", [(False, False), (True, False), (False, True)])
def test_the_variance_of_each_side_decides_the_kink(p_exact, q_exact):
    """cp = [58, 42], cq = [46, 54]: d = 0.12, within 2 sd when both sides vary (2 x 0.0701), not when only one
    does (2 x 0.0494 or 2 x 0.0498)."""
    cp, cq = np.array([58.0, 42.0]), np.array([46.0, 54.0])
    pp, qq = cp / 100, cq / 100
    p_in = pp if p_exact else cp
    q_in = qq if q_exact else cq
    r = H.histogram_metric("tv")(p_in, q_in, rng=np.random.default_rng(0), boot_rng=np.random.default_rng(1),
                                 bootstrap=200, confidence=0.8, p_exact=p_exact, q_exact=q_exact)
    boot = np.random.default_rng(1)
    bp = np.broadcast_to(pp, (200, 2)) if p_exact else boot.multinomial(100, pp, size=200) / 100
    bq = np.broadcast_to(qq, (200, 2)) if q_exact else boot.multinomial(100, qq, size=200) / 100
    var = (0 if p_exact else pp * (1 - pp) / 100) + (0 if q_exact else qq * (1 - qq) / 100)
    lo, hi = _written_out(pp, qq, (bp - bq) - (pp - qq), var, 0.12, 0.8)
    assert r.value == pytest.approx(0.12, abs=1e-15)
    assert r.ci == pytest.approx((max(lo, 0.0), min(hi, 1.0)), abs=1e-12)


def test_a_kl_whose_resamples_can_be_infinite_makes_no_coverage_claim():
    r = H.histogram_metric("kl_pq")([5, 5], [9, 1], rng=np.random.default_rng(0), boot_rng=np.random.default_rng(1),
                                    bootstrap=200, confidence=0.9)
    assert r.note == ("interval: percentile bootstrap shifted by the bootstrap bias estimate (not estimable: some "
                      "resamples are infinite; plain percentile), 200 multinomial resamples of the counts, seeded")
    assert r.ci[1] == math.inf
    finite = H.histogram_metric("kl_pq")([30, 20], [25, 25], rng=np.random.default_rng(0),
                                         boot_rng=np.random.default_rng(1), bootstrap=200, confidence=0.9)
    assert finite.note.startswith("interval: percentile bootstrap shifted by the bootstrap bias estimate (+")
    assert finite.note.endswith(": the plug-in's estimated bias), 200 multinomial resamples of the counts, seeded; "
                                "covers the true value")
