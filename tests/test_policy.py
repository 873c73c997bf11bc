"""The version policy and the quality gate (ganserve.store.policy): pure functions over manifests."""

import pytest

from ganserve.store import policy as P

GOOD = {"conditional_accuracy": 0.99, "frechet": 2.8, "kl_uniform": 0.001, "precision": 0.77, "recall": 0.80}
SMOKE = {"conditional_accuracy": 0.31, "frechet": 60.0, "kl_uniform": 0.4, "precision": 0.1, "recall": 0.05}


def _m(metrics, **extra):
    return {"metrics": metrics, **extra}


def test_the_gate_keeps_a_worse_version_a_candidate_and_says_why():
    d = P.decide({11: _m(GOOD), 12: _m(SMOKE)}, P.Policy())
    assert d.default == 11 and d.states[11] == (P.READY, "")
    state, reason = d.states[12]
    assert state == P.CANDIDATE
    assert "conditional_accuracy 0.31 vs @11's 0.99 (tolerance 0.02)" in reason and "frechet 60 vs @11's 2.8 (tolerance 10%)" in reason


def test_the_gate_accepts_within_tolerance_and_judges_against_the_last_accepted():
    near = dict(GOOD, conditional_accuracy=0.975, frechet=3.05)  # -0.015 and +8.9%: inside
    d = P.decide({1: _m(GOOD), 2: _m(SMOKE), 3: _m(near)}, P.Policy())
    assert [d.states[v][0] for v in (1, 2, 3)] == [P.READY, P.CANDIDATE, P.READY] and d.default == 3
    just_out = dict(GOOD, conditional_accuracy=0.969)
    assert P.decide({1: _m(GOOD), 2: _m(just_out)}, P.Policy()).default == 1
    assert P.decide({1: _m(GOOD), 2: _m(just_out)}, P.Policy(), gate=False).default == 2


def test_missing_figures_and_publisher_candidates():
    d = P.decide({1: _m(GOOD), 2: _m({})}, P.Policy())
    assert d.states[2][0] == P.CANDIDATE and "no conditional_accuracy figure" in d.states[2][1]
    assert P.decide({1: _m({}), 2: _m({})}, P.Policy()).default == 2  # nothing to judge: newest
    d = P.decide({1: _m(GOOD), 2: _m(GOOD, candidate="smoke run: 150 steps")}, P.Policy())
    assert d.default == 1 and d.states[2] == (P.CANDIDATE, "published as a candidate: smoke run: 150 steps")


def test_pinned_specific_promote_and_rollback():
    ms = {1: _m(GOOD), 2: _m(GOOD), 3: _m(SMOKE)}
    assert P.decide(ms, P.Policy("pinned", version=1)).default == 1
    d = P.decide(ms, P.Policy("specific", versions=(1, 3)))
    assert d.states[2] == (P.RETIRED, "not in the version policy's versions [1, 3]") and d.default == 1
    promoted = P.promote(P.Policy(), 3)
    assert P.decide(ms, promoted).default == 3
    back = P.rollback(promoted, 3, 2)
    d = P.decide(ms, back)
    assert d.default == 2 and d.states[3] == (P.RETIRED, "rolled back")
    assert P.decide(ms, P.promote(back, 3)).default == 3  # promote undoes a rollback
    with pytest.raises(P.PolicyError, match="nothing to roll back to"):
        P.rollback(P.Policy(), 1, None)


def test_flags_and_files(tmp_path):
    got = P.parse_flag("a=pinned:3; b=specific:1,2;c=latest")
    assert got == {"a": P.Policy("pinned", version=3), "b": P.Policy("specific", versions=(1, 2)), "c": P.Policy()}
    for bad, msg in (("a=pinned", "needs a positive"), ("a=newest", "mode must be one of"), ("a", "expected name="),
                     ("a=specific:x", "must be integers")):
        with pytest.raises(P.PolicyError, match=msg):
            P.parse_flag(bad)
    assert P.read(tmp_path) is None
    P.write(tmp_path, P.Policy("pinned", version=2, promoted=(2,)))
    assert P.read(tmp_path) == P.Policy("pinned", version=2, promoted=(2,))
    (tmp_path / P.POLICY_FILE).write_text('{"mode": "latest", "colour": 1}')
    with pytest.raises(P.PolicyError, match="unknown policy keys"):
        P.read(tmp_path)
