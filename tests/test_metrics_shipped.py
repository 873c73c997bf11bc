"""Divergence evaluation over the shipped model_store/ (each test skipped only when a model it needs is absent).

Known answers that hold for any trained model:
- the critic-based estimates through the RPC equal the formula on the shipped critic.onnx run here directly
  (P = real MNIST in the model's value range with its true labels, or ring8/grid25 points; Q = the model's
  samples at the server's Q seed), so the plumbing (value range, labels of a conditional critic, which critic
  scores) is checked; a WGAN-GP critic's bound stays below the exact W1 of the same samples;
- a WGAN critic's E_P f - E_Q f is unbiased for 0 when P = Q (the interval covers 0), and real-vs-generated is
  clearly above it; a discriminator's (V + log 4)/2 bound is <= its value on real-vs-generated when P = Q;
- a conditional model asked for one class covers 1 class: KL(P||Q) is +inf or large (Q misses real classes)
  while KL(Q||P) ~ log(1 / p_class) ~ log 10 - the asymmetry, measured through the RPC.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ganserve.store import sessions
from sdk import Client
from sdk._plot import _histograms
from tests.conftest import start_server
from tests.test_server_shipped_models import STORE, _need, _present, need_mnist

N, SEED = 1000, 3


@pytest.fixture(scope="module")
def client():
    if not _present("mnist-evaluator"):
        pytest.skip("model_store/ holds no evaluator yet")
    running = start_server(STORE, reload_interval_s=0, metrics_port=-1)
    with Client(running.target, timeout=600) as c:
        yield c
    running.app.stop(0)


def _reference(name: str, n: int, seed: int):
    from ganserve import data

    try:
        return data.reference(name, n, seed)
    except data.DataUnavailable as e:
        pytest.skip(str(e).splitlines()[0])


def _critic_scores(name: str, x: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """The shipped critic.onnx on x (already in the model's value range), run with ONNX Runtime directly."""
    import onnxruntime as ort

    folder = sessions.latest(STORE, name)  # the newest fp32 version (an int8 variant holds no critic)
    manifest = json.loads((folder / "manifest.json").read_text())
    graph = manifest["graphs"]["critic"]
    session = ort.InferenceSession(str(folder / graph["file"]), providers=["CPUExecutionProvider"])
    feeds = {graph["inputs"][0]["name"]: x.astype(np.float32)}
    if len(graph["inputs"]) > 1:
        feeds[graph["inputs"][1]["name"]] = np.eye(manifest["num_classes"], dtype=np.float32)[labels]
    return session.run(None, feeds)[0].reshape(-1).astype(np.float64)


@pytest.mark.parametrize("name,metric,reference", [
    ("gan-mnist", "js_critic", "mnist-test"), ("cgan-mnist", "js_critic", "mnist-test"),
    ("wgan-gp-mnist", "w1_critic", "mnist-test"), ("gan-ring8", "js_critic", "ring8"),
    ("wgan-gp-ring8", "w1_critic", "ring8"), ("gan-grid25", "js_critic", "grid25"),
    ("wgan-gp-grid25", "w1_critic", "grid25")])
def test_critic_estimate_equals_the_formula_on_the_shipped_critic(client, name, metric, reference):
    _need(name)
    conditional = client.get_model(name).conditional
    labels = [i % 10 for i in range(N)] if conditional else None
    ev = client.evaluate(reference, {"model": name, "labels": labels or []}, [metric], n=N, seed=SEED,
                         bootstrap=100)
    r = ev[metric]
    x_real, y_real = _reference(reference, N, SEED)
    x_real = np.asarray(x_real, np.float64)
    if reference.startswith("mnist"):
        x_real = 2.0 * x_real - 1.0  # references are in [0, 1], the models' value range is [-1, 1]
    real = _critic_scores(name, x_real, np.asarray(y_real))
    x_fake = client.sample(N, labels=labels, seed=SEED + 1, model=name)  # the server's Q seed is seed + 1
    fake = _critic_scores(name, x_fake, np.asarray(labels) if labels else None)
    if metric == "js_critic":
        expect = 0.5 * ((-np.logaddexp(0, -real)).mean() + (-np.logaddexp(0, fake)).mean() + math.log(4))
        assert 0 < r.value <= math.log(2)
    else:
        expect = real.mean() - fake.mean()
        assert r.ci_low > 0  # real data scores higher than the generator's samples
    assert r.value == pytest.approx(expect, rel=1e-3, abs=1e-4)
    assert r.lower_bound and r.ci_low <= r.value <= r.ci_high and (r.n_p, r.n_q) == (N, N)


@pytest.mark.parametrize("name,reference", [("wgan-gp-ring8", "ring8"), ("wgan-gp-grid25", "grid25")])
def test_wgan_critic_bound_is_below_the_exact_w1(client, name, reference):
    """E_P f - E_Q f <= W1 for a 1-Lipschitz f (WGAN-GP's f is only penalised towards it, hence the interval)."""
    _need(name)
    ev = client.evaluate(reference, name, ["w1_critic", "w1_exact"], n=2000, seed=SEED, bootstrap=100)
    assert 0 < ev["w1_critic"].ci_low and ev["w1_critic"].value <= ev["w1_exact"].ci_high, ev


def test_wgan_critic_is_unbiased_for_zero_when_p_equals_q(client):
    _need("wgan-gp-mnist")
    same = client.evaluate("wgan-gp-mnist", "wgan-gp-mnist", ["w1_critic"], n=N, seed=SEED, bootstrap=200)["w1_critic"]
    real = client.evaluate("mnist-test", "wgan-gp-mnist", ["w1_critic"], n=N, seed=SEED, bootstrap=200)["w1_critic"]
    assert same.ci_low <= 0 <= same.ci_high, same
    # The real-vs-model gap must be resolved (its interval above 0) and larger than the P = Q estimate. Not a fixed
    # ratio: a better generator narrows the gap (wgan-gp-mnist@13: 0.13-0.23 at n = 1,000 over seeds 1-3, against
    # P = Q noise of +-0.06-0.09), and the property tested here is the estimator's, not the model's.
    assert real.ci_low > 0 and abs(same.value) < real.value, (same, real)


def test_discriminator_bound_for_p_equals_q_is_below_real_vs_generated(client):
    _need("gan-mnist")
    same = client.evaluate("gan-mnist", "gan-mnist", ["js_critic"], n=N, seed=SEED, bootstrap=100)["js_critic"]
    real = client.evaluate("mnist-test", "gan-mnist", ["js_critic"], n=N, seed=SEED, bootstrap=100)["js_critic"]
    assert same.ci_low <= 0.0 and same.value < real.ci_low, (same, real)  # JS(P, P) = 0 bounds it from above


def test_single_class_model_kl_asymmetry_through_the_rpc(client):
    _need("cgan-mnist")
    need_mnist()
    ev = client.evaluate("mnist-test", {"model": "cgan-mnist", "labels": [3]}, ["kl_pq", "kl_qp", "js", "tv"],
                         n=N, seed=SEED, bootstrap=100)

    hp, hq = _histograms(ev)
    # one class covered (at >= 2% of the samples: the evaluator calls a few 3s something else)
    assert int((hq >= 0.02 * N).sum()) == 1 and hq.argmax() == 3 and hq[3] >= 0.95 * N, hq
    assert ev["kl_pq"].value > 3 * ev["kl_qp"].value, ev  # +inf as soon as Q leaves a real class empty
    if math.isinf(ev["kl_pq"].value):
        assert ev["kl_pq"].note.startswith("+inf: Q has zero count"), ev["kl_pq"]
    # KL(Q||P) = sum_k q_k log(q_k / p_k) on the two histograms: about log(1 / p_3) = log 10
    q, p = hq / hq.sum(), hp / hp.sum()
    expect = float(np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1) / p), 0.0)))
    assert ev["kl_qp"].value == pytest.approx(expect, rel=1e-9)
    assert 1.8 < ev["kl_qp"].value < 2.8
    assert ev["js"].value <= math.log(2) and 0.8 < ev["tv"].value <= 1.0
