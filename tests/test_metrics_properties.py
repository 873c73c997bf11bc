"""Properties every estimate keeps on arbitrary inputs: histogram bounds and symmetry; for every metric, extreme
finite values give an estimate without NaN or a MetricError with a reason (never another exception)."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ganserve.metrics import METRICS, Gaussian, MetricError, estimate

counts = st.lists(st.integers(0, 50), min_size=2, max_size=12).filter(lambda c: sum(c) > 0)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_histogram_metrics_bounds_symmetry_no_nan(data):
    p = np.array(data.draw(counts))
    q = np.array(data.draw(st.lists(st.integers(0, 50), min_size=len(p), max_size=len(p)).filter(lambda c: sum(c) > 0)))
    seed = data.draw(st.integers(0, 2**32))
    got = {m: estimate(m, p, q, seed=seed, bootstrap=20) for m in ("kl_pq", "kl_qp", "js", "js_bits", "tv")}
    for e in got.values():
        assert not any(math.isnan(v) for v in (e.value, e.ci_low, e.ci_high))
        assert e.ci_low <= e.value <= e.ci_high
    assert 0.0 <= got["js"].value <= math.log(2) + 1e-12 and 0.0 <= got["tv"].value <= 1.0 + 1e-12
    assert got["js_bits"].value == got["js"].value / math.log(2)
    assert got["js"].value == estimate("js", q, p, bootstrap=0).value
    assert got["kl_pq"].value >= 0.0 and got["kl_qp"].value == estimate("kl_pq", q, p, bootstrap=0).value
    pp, qq = p / p.sum(), q / q.sum()
    if np.any((pp > 0) & (qq == 0)):
        assert got["kl_pq"].value == math.inf and "+inf" in got["kl_pq"].note
    else:
        keep = pp > 0
        assert math.isclose(got["kl_pq"].value, float(np.sum(pp[keep] * np.log(pp[keep] / qq[keep]))), abs_tol=1e-12)
    # Pinsker: TV <= sqrt(KL / 2), and JS <= TV * log 2.
    assert got["tv"].value <= math.sqrt(got["kl_pq"].value / 2) + 1e-12
    assert got["js"].value <= got["tv"].value * math.log(2) + 1e-12


# --- every metric on extreme finite inputs: an estimate without NaN, or a MetricError with a reason

SAMPLE_METRICS = [m for m, spec in METRICS.items() if spec.input in ("samples", "features") and m != "w1_1d"]


def _extreme_points(data, n_min=40):
    n = data.draw(st.integers(n_min, 70), label="n")
    d = data.draw(st.integers(1, 3), label="d")
    g = np.random.default_rng(data.draw(st.integers(0, 2**32), label="seed"))
    x = g.standard_normal((n, d))
    exps = data.draw(st.lists(st.integers(-300, 300), min_size=n, max_size=n), label="exponents")
    share = data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]), label="share scaled")
    scaled = g.random(n) < share
    return np.where(scaled[:, None], x * 10.0 ** np.array(exps, dtype=np.float64)[:, None], x)


def _estimate_or_reason(metric, p, q, **kw):
    try:
        e = estimate(metric, p, q, bootstrap=4, **kw)
    except MetricError as err:
        assert str(err)
        return None
    assert not any(math.isnan(v) for v in (e.value, e.ci_low, e.ci_high)), e
    return e


@pytest.mark.parametrize("metric", SAMPLE_METRICS + ["w1_1d"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_sample_metrics_on_extreme_finite_values(metric, data):
    p, q = _extreme_points(data), _extreme_points(data)
    if metric == "w1_1d" or q.shape[1] != p.shape[1]:
        p, q = p[:, :1], q[:, :1]
    _estimate_or_reason(metric, p, q)


@pytest.mark.parametrize("metric", ["mc_kl_pq", "mc_kl_qp", "mc_js"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_density_metrics_on_extreme_finite_values(metric, data):
    q = _extreme_points(data)[:, :1]
    _estimate_or_reason(metric, Gaussian([0.0], [[1.0]]), q)


@pytest.mark.parametrize("metric", ["js_critic", "w1_critic"])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_critic_metrics_on_extreme_finite_values(metric, data):
    finite = st.floats(allow_nan=False, allow_infinity=False)
    p = np.array(data.draw(st.lists(finite, min_size=2, max_size=30)))
    q = np.array(data.draw(st.lists(finite, min_size=2, max_size=30)))
    _estimate_or_reason(metric, p, q)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_histogram_metrics_on_huge_counts(data):
    k = data.draw(st.integers(2, 6))
    big = st.integers(0, 10**18).map(float)
    p = np.array(data.draw(st.lists(big, min_size=k, max_size=k).filter(lambda c: sum(c) > 0)))
    q = np.array(data.draw(st.lists(big, min_size=k, max_size=k).filter(lambda c: sum(c) > 0)))
    for metric in ("kl_pq", "kl_qp", "js", "js_bits", "tv"):
        _estimate_or_reason(metric, p, q)
