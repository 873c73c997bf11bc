"""EvaluateDivergence end to end over a real server (tiny models from tests/conftest.py): known answers through
the RPC, every value with sample sizes and an interval, +inf with a reason, critic-based bounds from a shipped
critic compared with the formula computed here, and the requests that must be INVALID_ARGUMENT."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from protos import latents as latent_fn
from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from ganserve.store import manifest as mf
from tests.conftest import IMG, LATENT, _spec, _weights, build_critic, build_generator, manifest, \
    reference_generator, start_server

DS, MS = pb.DataSource, pb.ModelSource


def T(a) -> pb.Tensor:
    return tensors.from_array(np.asarray(a))


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.target)
    yield pb_grpc.GeneratorServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def wgan_stub(tmp_path_factory):
    """A store with a WGAN-GP-kind model whose manifest says its critic estimates the Wasserstein distance."""
    root = tmp_path_factory.mktemp("wgan")
    w = _weights(0)
    files = {"generator.onnx": build_generator(root / "g.onnx", False, w),
             "critic.onnx": build_critic(root / "c.onnx", w)}
    graphs = {"generator": {"file": "generator.onnx", "inputs": [_spec("z", [LATENT])], "outputs": [_spec("x", IMG)]},
              "critic": {"file": "critic.onnx", "inputs": [_spec("x", IMG)], "outputs": [_spec("score", [1])],
                         "estimates": "wasserstein"}}
    mf.publish(root / "store", manifest("tiny-wgan", "wgan-gp", graphs=graphs), files)
    running = start_server(root / "store", reload_interval_s=0, metrics_port=-1)
    channel = grpc.insecure_channel(running.target)
    yield pb_grpc.GeneratorServiceStub(channel)
    channel.close()
    running.app.stop(0)


def evaluate(stub, p, q, metrics, **kw) -> dict[str, pb.DivergenceResult]:
    reply = stub.EvaluateDivergence(pb.EvaluateDivergenceRequest(p=p, q=q, metrics=metrics, **kw))
    assert [r.metric for r in reply.results] == list(metrics) or not metrics
    return {r.metric: r for r in reply.results}


def assert_well_formed(r: pb.DivergenceResult, n_p: int, n_q: int) -> None:
    assert not math.isnan(r.value) and not math.isnan(r.ci_low) and not math.isnan(r.ci_high), r
    assert r.ci_low <= r.value <= r.ci_high and r.confidence == pytest.approx(0.95), r
    assert (r.n_p, r.n_q) == (n_p, n_q) and r.estimator and r.unit and r.note, r


def invalid(stub, request: pb.EvaluateDivergenceRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub.EvaluateDivergence(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value


# -- known answers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gap", [10.0, 100.0])
def test_point_masses_w1_is_the_gap_js_is_log2_kl_is_inf(stub, gap):
    p = DS(samples=T(np.zeros((300, 1), np.float32)))
    q = DS(samples=T(np.full((300, 1), gap, np.float32)))
    res = evaluate(stub, p, q, ["w1_exact", "w1_1d", "sliced_w"], seed=0, bootstrap=50)
    for r in res.values():
        assert r.value == pytest.approx(gap, rel=1e-6) and r.unit == "input units"
        assert_well_formed(r, 300, 300)
    # the same point masses as two one-bin histograms (class 0 vs class 1)
    p = DS(samples=T(np.zeros(300, np.int64)))
    q = DS(samples=T(np.ones(300, np.int64)))
    res = evaluate(stub, p, q, ["js", "js_bits", "tv", "kl_pq", "kl_qp"], seed=0, bootstrap=50)
    assert res["js"].value == pytest.approx(math.log(2), abs=1e-12)
    assert res["js_bits"].value == pytest.approx(1, abs=1e-12)
    assert res["tv"].value == pytest.approx(1.0, abs=1e-12)
    for name, empty_side, where in (("kl_pq", "Q", "[0]"), ("kl_qp", "P", "[1]")):
        r = res[name]
        assert math.isinf(r.value) and r.value > 0 and r.ci_high == math.inf, r
        assert r.note.startswith(f"+inf: {empty_side} has zero count in bin(s) {where}"), r.note
    for r in res.values():
        assert_well_formed(r, 300, 300)
        assert "histograms: P [300, 0]; Q [0, 300]" in r.note, r.note


def test_identical_uploads_give_zero_and_intervals_everywhere(stub):
    x = np.random.default_rng(0).standard_normal((400, 2)).astype(np.float32)
    res = evaluate(stub, DS(samples=T(x)), DS(samples=T(x)), [], seed=0, bootstrap=30)
    assert list(res) == ["knn_kl_pq", "knn_kl_qp", "w1_exact", "sliced_w"]  # the default set for 2-D samples
    for r in res.values():
        assert r.value == pytest.approx(0.0, abs=1e-9), r
        assert_well_formed(r, 400, 400)


def test_ring8_reference_against_exact_samples_of_it(stub):
    """Q = exact ring8 samples uploaded: the mode protocol's perfect-sampler values, through the RPC."""
    from ganserve import data

    x, _ = data.reference("ring8", 2500, 7)
    res = evaluate(stub, DS(reference="ring8"), DS(samples=T(np.asarray(x, np.float32))), [], n=2500, seed=0,
                   bootstrap=50)
    assert list(res)[:3] == ["modes_covered", "high_quality", "reverse_kl_modes"]
    assert res["modes_covered"].value == 8
    assert res["high_quality"].value == pytest.approx(1 - math.exp(-4.5), abs=0.01)
    assert 0 <= res["reverse_kl_modes"].value < 0.01
    assert res["mc_js"].value == pytest.approx(0, abs=0.02) and 0 <= res["mc_js"].value <= math.log(2)
    for r in res.values():
        assert not math.isnan(r.value) and r.ci_low <= r.value <= r.ci_high and r.n_q == 2500, r


# -- critic-based estimates from a shipped critic ---------------------------------------------------------------

def _critic_terms(u: np.ndarray, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Critic scores computed here: P = uploaded images u in [0, 1] (the server maps them to [-1, 1]), Q = the
    tiny generator at the server's Q seed (seed + 1). score = flatten(x) @ C."""
    c = _weights(0)["C"][:, 0].astype(np.float64)
    real = (2.0 * u - 1.0).reshape(len(u), -1) @ c
    fake = reference_generator(latent_fn.latents(seed + 1, n, LATENT)).reshape(n, -1).astype(np.float64) @ c
    return real, fake


def test_critic_bounds_from_a_model_side_match_the_formulas(stub):
    n, seed = 300, 5
    u = np.random.default_rng(1).uniform(0, 1, (n, 1, 8, 8)).astype(np.float32)
    res = evaluate(stub, DS(samples=T(u)), DS(model=MS(model="tiny-gan")), ["js_critic", "w1_critic"], n=n,
                   seed=seed, bootstrap=100)
    real, fake = _critic_terms(u, seed, n)
    log_d_real = -np.logaddexp(0, -real)   # log sigmoid
    log_1m_d_fake = -np.logaddexp(0, fake)
    js = 0.5 * (log_d_real.mean() + log_1m_d_fake.mean() + math.log(4))
    assert res["js_critic"].value == pytest.approx(js, rel=1e-4, abs=1e-5)
    assert res["w1_critic"].value == pytest.approx(real.mean() - fake.mean(), rel=1e-4, abs=1e-5)
    for r in res.values():
        assert r.lower_bound and r.note.startswith("variational lower bound"), r
        assert_well_formed(r, n, n)


def test_wgan_critic_default_metric_value_and_js_refused(wgan_stub):
    n, seed = 200, 3
    u = np.random.default_rng(2).uniform(0, 1, (n, 1, 8, 8)).astype(np.float32)
    p, q = DS(samples=T(u)), DS(model=MS(model="tiny-wgan"))
    reply = wgan_stub.EvaluateDivergence(pb.EvaluateDivergenceRequest(p=p, q=q, n=n, seed=seed, bootstrap=20))
    names = [r.metric for r in reply.results]
    assert names == ["w1_exact", "sliced_w", "w1_critic"]  # no evaluator in this store: pixel-space W1
    real, fake = _critic_terms(u, seed, n)
    assert reply.results[-1].value == pytest.approx(real.mean() - fake.mean(), rel=1e-4, abs=1e-5)
    err = invalid(wgan_stub, pb.EvaluateDivergenceRequest(p=p, q=q, metrics=["js_critic"], n=n, seed=seed))
    assert "does not apply to tiny-wgan@1" in err.details() and "use w1_critic" in err.details()


# -- impossible requests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("request_, field, message", [
    (pb.EvaluateDivergenceRequest(p=DS(reference="ring8"), q=DS(reference="ring8"), metrics=["fid"]),
     "metrics[0]", "unknown metric 'fid'"),
    (pb.EvaluateDivergenceRequest(p=DS(samples=T(np.zeros((10, 2), np.float32))),
                                  q=DS(samples=T(np.ones((10, 2), np.float32))), metrics=["js"]),
     "p", "needs class histograms"),
    (pb.EvaluateDivergenceRequest(p=DS(reference="ring8"), q=DS(reference="ring8"), n=10_001), "n",
     "must be at most 10000"),
    (pb.EvaluateDivergenceRequest(p=DS(samples=T(np.zeros((10_001, 1), np.float32))),
                                  q=DS(samples=T(np.zeros((5, 1), np.float32)))), "p.samples.shape",
     "at most 10000 samples"),
    (pb.EvaluateDivergenceRequest(p=DS(samples=T(np.zeros((10, 2), np.float32))),
                                  q=DS(samples=T(np.zeros((10, 2), np.float32))), metrics=["w1_1d"]),
     "metrics[0]", "w1_1d is for 1-D samples"),
    (pb.EvaluateDivergenceRequest(p=DS(samples=T(np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))), q=DS(samples=T(np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))), metrics=["knn_kl_pq"],
                                  options={"knn_kl_pq": pb.MetricOptions(k=0)}),
     "options[knn_kl_pq]", "option k (metric knn_kl_pq) must be an integer in 1..1000, got 0"),
    (pb.EvaluateDivergenceRequest(p=DS(samples=T(np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))), q=DS(samples=T(np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))), metrics=["w1_exact"],
                                  options={"w1_exact": pb.MetricOptions(projections=10)}),
     "options[w1_exact]", "metric w1_exact does not take option(s) projections (accepted: max_points)"),
    (pb.EvaluateDivergenceRequest(p=DS(samples=T(np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))), q=DS(samples=T(np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))), metrics=["w1_exact"],
                                  options={"sliced_w": pb.MetricOptions(projections=10)}),
     "options[sliced_w]", "metric 'sliced_w' is not among those computed (w1_exact)"),
    (pb.EvaluateDivergenceRequest(p=DS(samples=T(np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))), q=DS(samples=T(np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))), metrics=["sinkhorn"],
                                  options={"sinkhorn": pb.MetricOptions(reg=0.0)}),
     "options[sinkhorn]", "option reg (metric sinkhorn) must be a number in [0.0001, 10]"),
])
def test_impossible_requests_are_invalid_argument(stub, request_, field, message):
    err = invalid(stub, request_)
    assert message in err.details(), err.details()
    status = rpc_status.from_call(err)
    fields = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    assert fields == [field], (fields, err.details())


# -- options, bootstrap = 0, per-sample membership -----------------------------------------------------------

def test_bootstrap_zero_means_no_interval_and_unset_means_the_default(stub):
    x = np.random.default_rng(1).normal(size=(300, 2)).astype(np.float32)
    p, q = DS(samples=T(x)), DS(samples=T(x + 1))
    none = evaluate(stub, p, q, ["w1_exact", "frechet"], bootstrap=0)
    default = evaluate(stub, p, q, ["w1_exact", "frechet"])
    for name in ("w1_exact", "frechet"):
        assert none[name].ci_low == none[name].value == none[name].ci_high, none[name]
        assert default[name].ci_low < default[name].value < default[name].ci_high, default[name]
        assert none[name].value == default[name].value


def test_options_reach_the_estimator_and_per_sample_membership_comes_back(stub):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(400, 2)).astype(np.float32), rng.normal(size=(300, 2)).astype(np.float32) + 0.5
    r = evaluate(stub, DS(samples=T(x)), DS(samples=T(y)), ["precision", "recall", "sliced_w", "kid"], bootstrap=0,
                 options={"precision": pb.MetricOptions(k=5, per_sample=True), "recall": pb.MetricOptions(per_sample=True),
                          "sliced_w": pb.MetricOptions(projections=7), "kid": pb.MetricOptions(subsets=4, subset_size=50)})
    prec = tensors.to_array(r["precision"].per_sample)
    rec = tensors.to_array(r["recall"].per_sample)
    assert prec.shape == (300,) and rec.shape == (400,)  # per Q point, per P point
    assert prec.mean() == pytest.approx(r["precision"].value) and rec.mean() == pytest.approx(r["recall"].value)
    assert set(np.unique(prec)) <= {0.0, 1.0} and "k=5" in r["precision"].estimator and "k=3" in r["recall"].estimator
    assert "7 projections" in r["sliced_w"].estimator and "mean of 4 subsets of 50" in r["kid"].note
    assert not r["sliced_w"].HasField("per_sample")


def test_w2_and_sinkhorn_through_the_rpc_known_answer(stub):
    # Two point clouds 10 apart (each a tight cluster): W2 = 10 and the Sinkhorn divergence is close to W1 = 10.
    rng = np.random.default_rng(3)
    x = rng.normal(scale=0.01, size=(200, 2)).astype(np.float32)
    r = evaluate(stub, DS(samples=T(x)), DS(samples=T(x + np.float32([10.0, 0.0]))), ["w2_exact", "sinkhorn"])
    assert r["w2_exact"].value == pytest.approx(10.0, rel=1e-3)
    assert r["w2_exact"].ci_low <= r["w2_exact"].value <= r["w2_exact"].ci_high
    assert 9.0 <= r["sinkhorn"].value <= 10.01, r["sinkhorn"]
