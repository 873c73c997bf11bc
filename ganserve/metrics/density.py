"""KL and JS by Monte Carlo when P's density is known (a Gaussian, a 2-D mixture): Q exact when it is a
density too, else k-NN density (Kozachenko-Leonenko) estimates from Q's samples."""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from . import _inputs as I
from .intervals import boot_mean, boot_note, clip, extrapolated, extrapolation_note, half_sample_ci, percentile_ci
from .neighbours import atoms, kth_nonzero_distance
from .results import LOG2, QUADRATIC_MAX_N, MetricError, Result


def _density_side(p, metric: str):
    if not I.is_density(p):
        raise MetricError(f"P: metric {metric} needs a distribution with .log_density(x) and .sample(n, seed) "
                          f"(a ganserve.data.Mixture or ganserve.metrics.Gaussian); got {type(p).__name__}")
    return p


def log_q_knn(points: np.ndarray, q_samples: np.ndarray, k: int) -> np.ndarray:
    """k-NN density estimate of Q at `points`: log q(x) ~ psi(k) - log M - log V_d - d log r_k(x), with r_k the
    distance to the k-th nearest Q sample and M the number of Q samples other than copies of x (so M = m - 1
    at Q's own samples). E log q is then unbiased for fixed k as M grows (Kozachenko-Leonenko)."""
    m, d = q_samples.shape
    s = I.big_scale(points, q_samples)  # huge data: distances of the rescaled points, log s added back
    r, dup = kth_nonzero_distance(points / s, q_samples / s, k)
    return special.digamma(k) - np.log(m - dup) - I.log_unit_ball(d) - d * (np.log(r) + math.log(s))


_DEFAULT_K = {"kl_pq": 1, "kl_qp": 3, "js": 3}


def mc_metric(kind: str):
    """Monte Carlo KL/JS with P's exact log-density. Q's density is exact when Q is a density object too;
    otherwise it is replaced by k-NN estimates:
      KL(P||Q) = E_P[log p - log q^]  with q^ the k-NN density of Q's samples at P's samples (k=1: the bias
                 of this plug-in grows with k, as for the Wang-Kulkarni-Verdu estimator);
      KL(Q||P) = -H(Q) - E_Q log p   with H(Q) the Kozachenko-Leonenko k-NN entropy (k=3);
      JS       = H(M) - H(P)/2 - H(Q)/2, M = (P+Q)/2, with H(P) exact MC, H(Q) and H(M) Kozachenko-Leonenko
                 on Q's samples and on the pooled samples (equal sizes, so the pool is a sample of M). Plugging a
                 noisy k-NN density into log(2q/(p+q)) instead biases JS low by ~20% (measured on Gaussians).
    """
    def run(p, q, *, rng, boot_rng, bootstrap, confidence, n=None, k=_DEFAULT_K[kind]):
        name = f"mc_{kind}"
        p = _density_side(p, name)
        q_known = I.is_density(q)
        if q_known:
            n = 10_000 if n is None else int(n)
            y = np.asarray(q.sample(n, int(rng.integers(2**63))), np.float64).reshape(n, -1)
        else:
            y = I.points(q, "Q", name, min_n=k + 2, max_n=QUADRATIC_MAX_N)
            a = atoms(y)
            if len(a) and kind == "kl_qp":  # Q puts mass on single points, P has a density: infinite
                return Result(math.inf, (math.inf, math.inf), 0, len(y),
                              f"+inf: Q puts mass {a.sum() / len(y):.3g} on {len(a)} point(s) repeated "
                              f"exactly (up to {int(a.max())} copies) and P has a density",
                              "Monte Carlo with P's exact log-density")
            if len(a):
                raise MetricError(f"Q: the samples hold atoms (a point repeated {int(a.max())} times); the k-NN "
                                  f"density of Q that {name} needs does not exist; use mc_kl_qp or a histogram metric")
            if kind == "js" and n is not None and n != len(y):
                raise MetricError(f"mc_js with Q given as samples draws as many P samples as Q has ({len(y)}); "
                                  f"n={n} would make the pooled sample a different mixture")
        n_p = len(y) if n is None else int(n)
        x = np.asarray(p.sample(n_p, int(rng.integers(2**63))), np.float64).reshape(n_p, -1)
        if x.shape[1] != y.shape[1]:
            raise MetricError(f"P and Q must have the same dimension: P has {x.shape[1]}, Q has {y.shape[1]}")
        lp_x = p.log_density(x)  # (n_p,)
        lp_y = p.log_density(y)  # (n_q,)
        # Each term set is (per-sample terms, coefficient): value = sum coefficient * mean(terms).
        if q_known:
            lq_x, lq_y = q.log_density(x), q.log_density(y)
            estimator = "Monte Carlo with both exact log-densities"
            with np.errstate(invalid="ignore"):
                if kind == "kl_pq":
                    terms = [(lp_x - lq_x, 1.0)]
                elif kind == "kl_qp":
                    terms = [(lq_y - lp_y, 1.0)]
                else:
                    terms = [(LOG2 + lp_x - np.logaddexp(lp_x, lq_x), 0.5),
                             (LOG2 + lq_y - np.logaddexp(lp_y, lq_y), 0.5)]
        else:
            if kind == "kl_pq":
                terms = [(lp_x - log_q_knn(x, y, k), 1.0)]
                estimator = f"Monte Carlo with P's exact log-density, k-NN density of Q (k={k})"
            elif kind == "kl_qp":
                terms = [(log_q_knn(y, y, k) - lp_y, 1.0)]
                estimator = f"Monte Carlo with P's exact log-density, Kozachenko-Leonenko entropy of Q (k={k})"
            else:
                pooled = np.concatenate([x, y])
                terms = [(-log_q_knn(pooled, pooled, k), 1.0),   # H(M)
                         (lp_x, 0.5),                             # -H(P)/2
                         (log_q_knn(y, y, k), 0.5)]               # -H(Q)/2
                estimator = f"H(M) - H(P)/2 - H(Q)/2: P exact, Kozachenko-Leonenko entropies (k={k})"
        terms = [(np.where(np.isnan(t), np.inf, t), c) for t, c in terms]  # -inf - -inf: neither density there
        value = float(sum(c * t.mean() for t, c in terms))
        notes = []
        if math.isinf(value):
            side = "Q" if kind == "kl_pq" else "P"
            notes.append(f"+inf: {side}'s density is 0 at some samples of the other side")
        if kind == "kl_pq" and not q_known and math.isfinite(value):
            # The k-NN density of Q is biased where Q is sparse, as for knn_kl_pq: the same correction and interval.
            stat = lambda u, v: float(np.mean(p.log_density(u) - log_q_knn(u, v, k)))  # noqa: E731
            value, plain, levels = extrapolated(stat, x, y, rng, smallest=max(k + 2, 20))
            notes.append(extrapolation_note(plain, value, levels))
            if bootstrap > 0 and min(len(x), len(y)) >= 2 * max(k + 2, 20):
                ci, note = half_sample_ci(stat, x, y, value, boot_rng, confidence, smallest=max(k + 2, 20))
                notes.append(note)
            else:
                ci = (value, value)
        elif bootstrap > 0 and math.isfinite(value):
            reps = sum(c * boot_mean(t, boot_rng, bootstrap) for t, c in terms)
            ci = percentile_ci(reps, value, confidence)
            notes.append(boot_note(bootstrap, "Monte Carlo terms")
                         + (" (each term set resampled independently)" if len(terms) > 1 else ""))
        else:
            ci = (value, value)
        value, ci = clip(value, ci, 0.0, LOG2 if kind == "js" else math.inf, notes)
        if not q_known:
            notes.append("Q's density is unknown: k-NN estimates for Q (see the metric description for the bias)")
        return Result(value, ci, n_p, len(y), "; ".join(notes), estimator)

    return run
