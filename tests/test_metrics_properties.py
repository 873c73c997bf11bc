"""Properties every histogram estimate keeps on arbitrary inputs: bounds, symmetry, never NaN."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ganserve.metrics import estimate

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
