"""The metric table (`METRICS`: name -> input kind, unit, formula and bias, interval), `estimate` (the one
entry point), the default metric set per kind of data and the docs' table."""

from __future__ import annotations

from typing import Callable

from . import _inputs as I
from .critic import critic_metric
from .density import mc_metric
from .frechet import frechet, kid_metric
from .histogram import histogram_metric
from .knn import knn_kl_metric
from .mixtures import mode_metric
from .options import validate
from .prdc import prdc_metric
from .results import (FEATURE_MAX_N, FRECHET_MAX_BOOTSTRAP, MAX_BOOTSTRAP, QUADRATIC_MAX_N, SORT_MAX_N,
                      W1_MAX_POINTS, Estimate, Metric, MetricError)
from .transport import SINKHORN_MAX_POINTS, sinkhorn, w2_exact
from .wasserstein import sliced_w, w1_1d, w1_exact

_INTERVALS = {
    "histogram": "percentile bootstrap (multinomial resampling of the counts) shifted by the bootstrap bias "
                 "estimate; covers the true value",
    "tv": "bootstrap of TV's directional derivative (Fang & Santos 2019), kink-aware where p_k ~ q_k; covers the "
          "true value",
    "knn_kl": "Student-t from 16 random half-samples, scaled for sd ~ n^-0.25 (measured 0.3); covers the true value",
    "w1_exact": "normal, delta method with the OT dual potentials; covers E W1(P_n, Q_m), the bias is stated",
    "sliced_w": "normal, delta method (each point's influence) plus the spread over directions",
    "w1_1d": "percentile bootstrap (multinomial weights on the sorted pooled sample)",
    "frechet": f"Student-t ({FRECHET_MAX_BOOTSTRAP - 1} df), standard error of <= {FRECHET_MAX_BOOTSTRAP} bootstrap refits; "
               "covers E (biased up), Frechet-infinity the truth",
    "w2_exact": "normal on W2^2, delta method with the OT dual potentials; covers E W2(P_n, Q_m)",
    "sinkhorn": "Student-t from 10 disjoint random groups (variance / 10: parametric rate)",
    "kid": "normal, first-order U-statistic variance plus the subset spread (independent subsets per side)",
    "prdc": "Student-t from 10 disjoint random groups (variance / 10)",
    "density": "percentile bootstrap of the Monte Carlo terms (mc_kl_pq on samples: as knn_kl)",
    "modes": "percentile bootstrap of the generated points",
    "critic": "percentile bootstrap of the scores, both sides",
}


def _m(name, input, unit, description, estimator, fn, options=(), max_n=None, lower_bound=False) -> Metric:
    kind = ("tv" if name == "tv" else "histogram" if input == "histogram" else "knn_kl" if name.startswith("knn_kl") else
            "prdc" if name in ("precision", "recall", "density", "coverage") else
            "modes" if name in ("modes_covered", "high_quality", "reverse_kl_modes") else
            input if input in ("density", "critic") else name)
    return Metric(name, input, unit, description, estimator, fn, tuple(options), max_n, lower_bound, _INTERVALS[kind])


_HIST_OPTS = ("p_exact", "q_exact", "labels")
_PLUGIN_BIAS = ("plug-in; when P = Q its mean is about (K-1)/2 (1/n_p + 1/n_q), not 0; +inf (bins named in the "
                "note) when one side has an empty bin the other uses")

METRICS: dict[str, Metric] = {m.name: m for m in [
    _m("kl_pq", "histogram", "nats", f"KL(P||Q) = sum_k p_k log(p_k/q_k) on histograms; {_PLUGIN_BIAS}",
       "plug-in on histograms", histogram_metric("kl_pq"), _HIST_OPTS),
    _m("kl_qp", "histogram", "nats", f"KL(Q||P) = sum_k q_k log(q_k/p_k) on histograms; {_PLUGIN_BIAS}",
       "plug-in on histograms", histogram_metric("kl_qp"), _HIST_OPTS),
    _m("js", "histogram", "nats", "JS = KL(P||M)/2 + KL(Q||M)/2, M = (P+Q)/2; in [0, log 2], always finite; "
       "plug-in, mean about (K-1)/8 (1/n_p + 1/n_q) when P = Q", "plug-in on histograms", histogram_metric("js"), _HIST_OPTS),
    _m("js_bits", "histogram", "bits", "JS / log 2, in [0, 1]; plug-in as js", "plug-in on histograms",
       histogram_metric("js_bits"), _HIST_OPTS),
    _m("tv", "histogram", "fraction", "TV = sum_k |p_k - q_k| / 2, in [0, 1]; plug-in, biased upward by "
       "O(sqrt(K/n)) when P = Q", "plug-in on histograms", histogram_metric("tv"), _HIST_OPTS),
    _m("knn_kl_pq", "samples", "nats", "Wang, Kulkarni & Verdu (2009): d/n sum_i log(nu_k(i)/rho_k(i)) + "
       "log(m/(n-1)), k=1, then bias-corrected by extrapolation over n (n, n/2, ..., n/16; fitted bias ~ n^-a); the "
       "plain estimate is biased low when Q is sparse where P has mass (N(0,1) vs N(3,1), true 4.5: 3.93 at n=1,000, "
       "4.28 at n=10,000), the corrected one is not (measured bias and coverage: docs/divergence_evaluation.md); d is "
       "the ambient dimension so it is unreliable on data near a low-dimensional manifold",
       "k-NN (Wang, Kulkarni & Verdu 2009)", knn_kl_metric("pq"), ("k",), QUADRATIC_MAX_N),
    _m("knn_kl_qp", "samples", "nats", "the same estimator with P and Q swapped: KL(Q||P)",
       "k-NN (Wang, Kulkarni & Verdu 2009)", knn_kl_metric("qp"), ("k",), QUADRATIC_MAX_N),
    _m("w1_exact", "samples", "input units", f"exact W1 = min over couplings of E|x - y| (POT ot.emd2, "
       f"Euclidean cost) on seeded subsamples of at most {W1_MAX_POINTS} points; biased upward at finite n "
       "(the empirical W1 between two samples of one distribution is > 0)", "exact OT (POT ot.emd2)",
       w1_exact, ("max_points",)),
    _m("sliced_w", "samples", "input units", "sliced W1: mean over 100 seeded random unit directions of the "
       "1-D W1 of the projections (POT ot.sliced_wasserstein_distance, p=1); <= W1; biased upward at finite n",
       "sliced Wasserstein (POT)", sliced_w, ("projections",), SORT_MAX_N),
    _m("w1_1d", "samples", "input units", "1-D W1 = integral |F_P - F_Q| (scipy.stats.wasserstein_distance), "
       "exact for the samples; D = 1 only", "scipy.stats.wasserstein_distance", w1_1d, (), SORT_MAX_N),
    _m("w2_exact", "samples", "input units", f"exact W2 = sqrt(min over couplings of E|x - y|^2) (POT ot.emd2) on "
       f"seeded subsamples of at most {W1_MAX_POINTS} points; biased upward at finite n", "exact OT (POT ot.emd2)",
       w2_exact, ("max_points",)),
    _m("sinkhorn", "samples", "input units", "Sinkhorn divergence OT_e(P,Q) - OT_e(P,P)/2 - OT_e(Q,Q)/2, Euclidean "
       "cost, e = reg x median cost (reg 0.05; Genevay et al. 2018, POT ot.sinkhorn2), on seeded subsamples of at "
       f"most {SINKHORN_MAX_POINTS} points; 0 when P = Q, below W1", "Sinkhorn divergence (POT)", sinkhorn,
       ("reg", "max_points")),
    _m("frechet", "features", "feature units^2", "Frechet distance on (evaluator) features: |mu_P - mu_Q|^2 + "
       "tr(S_P + S_Q - 2 (S_P^1/2 S_Q S_P^1/2)^1/2) = W2^2 between fitted Gaussians (FID's formula, not on "
       "Inception features); biased upward at finite n; option extrapolate: Frechet-infinity (Chong & Forsyth "
       "2020, extrapolated in 1/n)", "Frechet distance between fitted Gaussians", frechet, ("extrapolate",)),
    _m("kid", "features", "kernel units", "unbiased MMD^2 with k(x,y) = (x.y/d + 1)^3, mean over 50 subsets of "
       "1,000 (Binkowski et al. 2018, their code's defaults); unbiased, can be slightly negative", "unbiased MMD^2 (Binkowski et al. 2018)",
       kid_metric, ("subsets", "subset_size")),
    _m("precision", "features", "fraction", "fraction of Q points inside the k-NN ball (k=3) of some P point "
       "(Kynkaanniemi et al. 2019); below 1 even for P = Q (0.47 at k=5, d=1,000, n=10,000)",
       "k-NN manifolds (Kynkaanniemi et al. 2019)", prdc_metric("precision", 3), ("k", "per_sample"), FEATURE_MAX_N),
    _m("recall", "features", "fraction", "fraction of P points inside the k-NN ball (k=3) of some Q point "
       "(Kynkaanniemi et al. 2019)", "k-NN manifolds (Kynkaanniemi et al. 2019)",
       prdc_metric("recall", 3), ("k", "per_sample"), FEATURE_MAX_N),
    _m("density", "features", "ratio", "mean over Q points of (number of P k-NN balls containing it)/k, k=5 "
       "(Naeem et al. 2020); ~1 for P = Q, robust to P outliers", "k-NN manifolds (Naeem et al. 2020)",
       prdc_metric("density", 5), ("k", "per_sample"), FEATURE_MAX_N),
    _m("coverage", "features", "fraction", "fraction of P points whose k-NN ball (k=5) holds a Q point "
       "(Naeem et al. 2020); 0.96-0.97 for P = Q (k=5, d=1,000, n=10,000)", "k-NN manifolds (Naeem et al. 2020)",
       prdc_metric("coverage", 5), ("k", "per_sample"), FEATURE_MAX_N),
    _m("mc_kl_pq", "density", "nats", "E_P[log p - log q] by Monte Carlo with P's exact density; log q exact when Q "
       "is a density (unbiased), else the k-NN density of Q's samples (k=1), bias-corrected by extrapolation over n "
       "like knn_kl_pq",
       "Monte Carlo with the true log-density", mc_metric("kl_pq"), ("n", "k")),
    _m("mc_kl_qp", "density", "nats", "E_Q[log q - log p] = -H(Q) - E_Q log p: log p exact; H(Q) by the "
       "Kozachenko-Leonenko k-NN entropy (k=3, small bias in low dimension) unless Q is a density (exact MC)", "Monte Carlo with the true log-density",
       mc_metric("kl_qp"), ("n", "k")),
    _m("mc_js", "density", "nats", "exact MC of E_P log(2p/(p+q))/2 + E_Q log(2q/(p+q))/2 when Q is a density; "
       "else H(M) - H(P)/2 - H(Q)/2 with Kozachenko-Leonenko entropies for M and Q (k=3; within ~5% on "
       "2-D Gaussians at n=5,000); clipped to [0, log 2]", "Monte Carlo with the true log-density", mc_metric("js"), ("n", "k")),
    _m("modes_covered", "density", "modes", "modes with >= 1 high-quality sample (within 3 std of the mean), "
       "VEEGAN/PacGAN protocol on 2,500 samples", "VEEGAN/PacGAN mode protocol", mode_metric("modes_covered")),
    _m("high_quality", "density", "fraction", "fraction of samples within 3 std of the nearest mean; a perfect "
       "2-D sampler scores 1 - exp(-4.5) = 0.989", "VEEGAN/PacGAN mode protocol", mode_metric("high_quality")),
    _m("reverse_kl_modes", "density", "nats", "KL(mode histogram of the high-quality samples || uniform); log K "
       "for a sampler collapsed on one mode, ~0.002 for a perfect ring8 sampler from noise at n=2,500",
       "VEEGAN/PacGAN mode protocol", mode_metric("reverse_kl_modes")),
    _m("js_critic", "critic", "nats", "(V + log 4)/2 with V = E_P log D(x) + E_Q log(1 - D(x)) from the "
       "discriminator's logits (stable log-sigmoid); a variational lower bound on JS",
       "discriminator bound", critic_metric("js_critic"), ("scores",), lower_bound=True),
    _m("w1_critic", "critic", "critic units", "E_P f(x) - E_Q f(x) with a WGAN-GP critic f; a lower bound on "
       "W1 to the extent f is 1-Lipschitz", "critic bound", critic_metric("w1_critic"), ("scores",),
       lower_bound=True),
]}


def validate_options(metric: str, options: dict) -> dict:
    """`options` for `metric` checked against ganserve.metrics.options (an unknown metric is a MetricError)."""
    if metric not in METRICS:
        raise MetricError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    return validate(metric, METRICS[metric].options, options)


def estimate(metric: str, p, q, *, seed: int = 0, bootstrap: int = 200, confidence: float = 0.95,
             cancelled: Callable[[], bool] | None = None, **context) -> Estimate:
    """Estimate `metric` between P (reference) and Q (model); see `METRICS[metric].input` for what P and Q are.

    `seed` drives subsampling, random projections, sampling from known densities and the bootstrap (the
    point estimate does not depend on `bootstrap`). `context` holds metric options (`Metric.options`),
    e.g. k=5 or q_exact=True; an option the metric does not take is an error. `cancelled`, when given, is
    polled inside long loops (per chunk, resample or subsample); once it returns True the estimate stops with
    `Cancelled`.
    """
    if metric not in METRICS:
        raise MetricError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    m = METRICS[metric]
    bootstrap = I.int_option("bootstrap", bootstrap, 0, MAX_BOOTSTRAP)
    if not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise MetricError(f"confidence must be in (0, 1), got {confidence!r}")
    rng, boot_rng = I.rngs(seed)
    context = validate(metric, m.options, context)
    with I.cancellation(cancelled):
        r = m.fn(p, q, rng=rng, boot_rng=boot_rng, bootstrap=int(bootstrap), confidence=float(confidence), **context)
    lo, hi = r.ci
    return Estimate(metric=metric, value=float(r.value), ci_low=float(lo), ci_high=float(hi),
                    confidence=float(confidence), n_p=int(r.n_p), n_q=int(r.n_q),
                    estimator=r.estimator or m.estimator, unit=m.unit, lower_bound=m.lower_bound, note=r.note,
                    per_sample=r.per_sample)


DATA_KINDS = {
    "histogram": ["kl_pq", "kl_qp", "js", "tv"],
    "features": ["frechet", "kid", "precision", "recall", "density", "coverage"],
    "images": ["kl_pq", "kl_qp", "js", "tv", "frechet", "kid", "precision", "recall", "density", "coverage"],
    "pixels": ["w1_exact", "sliced_w"],  # images when no evaluator classifier is available
    "mixture": ["modes_covered", "high_quality", "reverse_kl_modes", "mc_kl_qp", "mc_js", "w1_exact", "sliced_w"],
    "samples": ["knn_kl_pq", "knn_kl_qp", "w1_exact", "sliced_w"],
    "samples-1d": ["knn_kl_pq", "knn_kl_qp", "w1_1d"],
    "critic": ["js_critic"],
    "wgan-critic": ["w1_critic"],
}


def default_metrics(data_kind: str) -> list[str]:
    """A sensible metric set for a kind of data: one of DATA_KINDS (images = class histograms from the
    evaluator plus its features; pixels = images without an evaluator; mixture = a 2-D Gaussian mixture
    reference against samples)."""
    if data_kind not in DATA_KINDS:
        raise MetricError(f"unknown data kind {data_kind!r}; known: {', '.join(DATA_KINDS)}")
    return list(DATA_KINDS[data_kind])


def metrics_table_markdown() -> str:
    """The README table: name, input, unit, formula and bias."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| metric | input | unit | formula, bias | interval |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| `{m.name}` | {m.input} | {cell(m.unit)} | {cell(m.description)} | {m.interval} |"
             for m in METRICS.values()]
    return "\n".join(rows)
