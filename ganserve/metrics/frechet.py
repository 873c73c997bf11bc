"""Gaussians (a density input with closed-form KL and W2), the Frechet distance between Gaussians fitted to
features, and KID (unbiased MMD^2 with a cubic polynomial kernel)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

from . import _inputs as I
from .intervals import normal_ci
from .options import validate
from .results import FRECHET_MAX_BOOTSTRAP, MetricError, Result


@dataclass(frozen=True)
class Gaussian:
    """A multivariate normal with exact log-density and seeded sampling (a "density" input)."""

    mean: np.ndarray  # (D,)
    cov: np.ndarray   # (D, D), symmetric positive definite

    def __post_init__(self):
        mean = np.atleast_1d(np.asarray(self.mean, np.float64))
        cov = np.atleast_2d(np.asarray(self.cov, np.float64))
        if mean.ndim != 1 or cov.shape != (len(mean), len(mean)):
            raise MetricError(f"Gaussian: mean (D,) and cov (D, D) needed, got {mean.shape} and {cov.shape}")
        if not np.allclose(cov, cov.T) or not np.all(np.isfinite(cov)):
            raise MetricError("Gaussian: cov must be finite and symmetric")
        try:
            chol = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError as e:
            raise MetricError("Gaussian: cov must be positive definite") from e
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)
        object.__setattr__(self, "_chol", chol)

    @property
    def dim(self) -> int:
        return len(self.mean)

    def log_density(self, x: np.ndarray) -> np.ndarray:
        """log N(x; mean, cov) for points (N, D)."""
        x = np.asarray(x, np.float64).reshape(-1, self.dim)
        z = solve_triangular(self._chol, (x - self.mean).T, lower=True)  # (D, N)
        logdet = 2.0 * np.log(np.diag(self._chol)).sum()
        return -0.5 * ((z**2).sum(0) + logdet + self.dim * math.log(2 * math.pi))

    def sample(self, n: int, seed: int | np.random.Generator = 0) -> np.ndarray:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        return self.mean + rng.standard_normal((n, self.dim)) @ self._chol.T


def gaussian_kl(p: Gaussian, q: Gaussian) -> float:
    """Closed-form KL(p || q) in nats: 1/2 [tr(Sq^-1 Sp) + (mq-mp)^T Sq^-1 (mq-mp) - D + ln(det Sq / det Sp)]."""
    sq_inv = np.linalg.inv(q.cov)
    diff = q.mean - p.mean
    _, logdet_p = np.linalg.slogdet(p.cov)
    _, logdet_q = np.linalg.slogdet(q.cov)
    return float(0.5 * (np.trace(sq_inv @ p.cov) + diff @ sq_inv @ diff - p.dim + logdet_q - logdet_p))


def frechet_from_stats(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), the squared W2 between two Gaussians.

    Square roots by symmetric eigendecomposition (eigenvalues clipped at 0): real by construction, where
    scipy.linalg.sqrtm of the non-symmetric S1 S2 returns tiny imaginary parts that must be discarded.
    """
    w, v = np.linalg.eigh(s1)
    s1_half = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    mid = s1_half @ s2 @ s1_half
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (mid + mid.T)), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_cross, 0.0))


def gaussian_w2_squared(p: Gaussian, q: Gaussian) -> float:
    """Closed-form squared 2-Wasserstein distance between two Gaussians (= their Frechet distance)."""
    return frechet_from_stats(p.mean, p.cov, q.mean, q.cov)


def mean_cov(x: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    if w is None:
        mu = x.mean(0)
        xc = x - mu
        return mu, (xc.T @ xc) / (len(x) - 1)
    mu = w @ x / w.sum()
    xc = x - mu
    return mu, (xc.T * w) @ xc / (w.sum() - 1)


def _scale(a: np.ndarray, b: np.ndarray) -> float:
    """A power of two near the largest magnitude: features are divided by it before any product (so 1e20-sized
    features cannot overflow a square) and the Frechet distance, of degree 2, is multiplied back by its square."""
    top = max(float(np.abs(a).max()), float(np.abs(b).max()))
    return 1.0 if top == 0.0 else float(2.0 ** math.frexp(top)[1])


def _unscaled(value: float, s: float, metric: str) -> float:
    out = value * s * s
    if not math.isfinite(out):
        raise MetricError(f"{metric}: the features are too large (up to {s:.3g}): the squared distance overflows "
                          "float64; rescale them")
    return out


def frechet_distance(a, b) -> float:
    """Frechet distance between Gaussians fitted to features a (N, F) and b (M, F) (FID's formula, on
    whatever features are given; on evaluator features call it "Frechet distance on evaluator features")."""
    x, y = I.pair(a, b, "frechet")
    s = _scale(x, y)
    return _unscaled(frechet_from_stats(*mean_cov(x / s), *mean_cov(y / s)), s, "frechet")


def _frechet_infinity(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, confidence: float):
    """Frechet-infinity (Chong & Forsyth 2020): the distance at 8 sizes from n/5 to n (seeded subsamples of
    both sides), fitted as FD_N = FD_inf + c / N by least squares; FD_inf with the intercept's standard error."""
    fractions = np.linspace(0.2, 1.0, 8)
    inv, vals = [], []
    for f in fractions:
        I.checkpoint()
        na, nb = max(2, int(round(f * len(a)))), max(2, int(round(f * len(b))))
        xa = a[rng.choice(len(a), na, replace=False)] if na < len(a) else a
        xb = b[rng.choice(len(b), nb, replace=False)] if nb < len(b) else b
        inv.append(1.0 / min(na, nb))
        vals.append(frechet_from_stats(*mean_cov(xa), *mean_cov(xb)))
    design = np.stack([np.ones(len(inv)), inv], 1)  # (8, 2)
    coef, *_ = np.linalg.lstsq(design, np.array(vals), rcond=None)
    resid = np.array(vals) - design @ coef
    cov = np.linalg.inv(design.T @ design) * (resid @ resid) / (len(vals) - 2)
    return float(coef[0]), normal_ci(float(coef[0]), math.sqrt(max(cov[0, 0], 0.0)), confidence)


def _boot_spread(stat, na: int, nb: int, boot_rng: np.random.Generator, count: int) -> float:
    """sd of stat(ia, ib) over `count` bootstrap resamples (index vectors (na,), (nb,)); paired when P and Q
    have one size, as in sliced_w."""
    reps = []
    for _ in range(count):
        I.checkpoint()
        ia = boot_rng.integers(0, na, na)
        reps.append(stat(ia, ia if na == nb else boot_rng.integers(0, nb, nb)))
    return float(np.std(reps, ddof=1))


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(idx, minlength=n).astype(np.float64)


def frechet(p, q, *, rng, boot_rng, bootstrap, confidence, extrapolate=False):
    a, b = I.pair(p, q, "frechet", min_n=10 if extrapolate else 2)
    s = _scale(a, b)
    a, b = a / s, b / s  # exact (a power of two); undone on the result
    if extrapolate:
        value, _ = _frechet_infinity(a, b, rng, confidence)
        ci, b_eff = (value, value), min(bootstrap, FRECHET_MAX_BOOTSTRAP)
        if b_eff > 1:  # the whole extrapolation refitted on bootstrap resamples: the sampling spread of FD_inf
            sd = _boot_spread(lambda ia, ib: _frechet_infinity(a[ia], b[ib], boot_rng, confidence)[0], len(a), len(b),
                              boot_rng, b_eff)
            ci = normal_ci(value, sd, confidence, df=b_eff - 1)
            ci = (max(ci[0], 0.0), ci[1])
        note = ("Frechet-infinity (Chong & Forsyth 2020): the distance at 8 sizes from n/5 to n, extrapolated "
                f"linearly in 1/n to n = inf; interval: Student-t ({b_eff - 1} df), standard error from {b_eff} "
                "bootstrap refits of the extrapolation, seeded; covers the true value (when the 1/n model holds)")
        return Result(_unscaled(value, s, "frechet"), (_unscaled(ci[0], s, "frechet"), _unscaled(ci[1], s, "frechet")),
                      len(a), len(b), note, "Frechet-infinity, extrapolated in 1/n")
    value = frechet_from_stats(*mean_cov(a), *mean_cov(b))
    b_eff = min(bootstrap, FRECHET_MAX_BOOTSTRAP)
    notes = ["squared W2 between Gaussians fitted to the features; biased upward at finite n"]
    if b_eff > 1:
        # Resamples hold repeated points, so their Frechet distances carry extra upward bias: a percentile
        # interval would sit above the estimate. Use their spread only; Student-t, the sd being from b_eff values.
        sd = _boot_spread(lambda ia, ib: frechet_from_stats(*mean_cov(a, _weights(ia, len(a))),
                                                            *mean_cov(b, _weights(ib, len(b)))), len(a), len(b), boot_rng, b_eff)
        ci = normal_ci(value, sd, confidence, df=b_eff - 1)
        ci = (max(ci[0], 0.0), ci[1])
        notes.append(f"interval: Student-t ({b_eff - 1} df), standard error from {b_eff} bootstrap resamples, seeded"
                     + (" (capped: each refits two covariances)" if b_eff < bootstrap else "")
                     + "; it covers the estimator's expectation, above the true distance by O(d^2/n) (use "
                     "extrapolate for Frechet-infinity, whose interval covers the true value)")
    else:
        ci = (value, value)
    value, ci = _unscaled(value, s, "frechet"), (_unscaled(ci[0], s, "frechet"), _unscaled(ci[1], s, "frechet"))
    return Result(value, ci, len(a), len(b), "; ".join(notes), "Frechet distance between fitted Gaussians")


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x.y / d + 1)^3, float64."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _kid_subsets(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, subsets: int, subset_size: int,
                 same: bool):
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 on `subsets` random subsets (Binkowski et al. 2018, as in
    their reference code: independent subsets on each side). When P and Q are the same array the two subsets
    are disjoint, so that they are independent samples as the estimator assumes (overlapping subsets of one
    set bias it below 0). Returns per-subset estimates and the first-order (Hoeffding) variance terms."""
    m = subset_size
    est, var_gx, var_gy = [], [], []
    for _ in range(subsets):
        I.checkpoint()
        if same:
            perm = rng.permutation(len(x))
            ix, iy = perm[:m], perm[m:2 * m]
        else:
            ix, iy = rng.choice(len(x), m, replace=False), rng.choice(len(y), m, replace=False)
        xs, ys = x[ix], y[iy]
        kxx, kyy, kxy = _poly_kernel(xs, xs), _poly_kernel(ys, ys), _poly_kernel(xs, ys)
        rxx = (kxx.sum(1) - np.diag(kxx)) / (m - 1)  # (m,) mean similarity of each x to the other x's
        ryy = (kyy.sum(1) - np.diag(kyy)) / (m - 1)
        est.append(rxx.mean() + ryy.mean() - 2.0 * kxy.mean())
        var_gx.append(np.var(rxx - kxy.mean(1), ddof=1))
        var_gy.append(np.var(ryy - kxy.mean(0), ddof=1))
    return np.array(est), float(np.mean(var_gx)), float(np.mean(var_gy))


def kid_metric(p, q, *, rng, boot_rng, bootstrap, confidence, subsets=50, subset_size=1000):
    a, b = I.pair(p, q, "kid")
    same = a.shape == b.shape and bool(np.array_equal(a, b))
    m = min(subset_size, len(a) // 2 if same else min(len(a), len(b)))
    if m < 2:
        raise MetricError(f"kid: P and Q are the same {len(a)} points; disjoint subsets need at least 4")
    est, vgx, vgy = _kid_subsets(a, b, rng, int(subsets), m, same)
    if not np.all(np.isfinite(est)):
        raise MetricError("kid: the features are too large for the cubic kernel (its values overflow float64); "
                          "rescale them")
    value = float(est.mean())
    # Variance of the mean of S subset U-statistics (an incomplete U-statistic): the full-data first-order
    # term 4 Var(g)/n per side, plus the between-subset spread beyond it divided by S.
    v_full = 4.0 * vgx / len(a) + 4.0 * vgy / len(b)
    v_sub = float(np.var(est, ddof=1)) if len(est) > 1 else 0.0
    se = math.sqrt(v_full + max(v_sub - v_full, 0.0) / len(est)) if bootstrap > 0 else 0.0
    ci = normal_ci(value, se, confidence)
    note = (f"mean of {len(est)} subsets of {m}" + (" (P and Q identical: disjoint subsets)" if same else "")
            + "; interval: normal, first-order U-statistic variance plus "
            + "subset spread; unbiased, so it can be slightly negative when P = Q")
    return Result(value, ci, len(a), len(b), note, "unbiased MMD^2, kernel (x.y/d+1)^3 (Binkowski et al. 2018)")


def kid(a, b, *, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance's estimator (unbiased MMD^2, cubic polynomial kernel) on given features;
    the value of estimate("kid", a, b, seed=seed)."""
    rng, boot_rng = I.rngs(seed)
    opts = validate("kid", ("subsets", "subset_size"), {"subsets": subsets, "subset_size": subset_size})
    return kid_metric(a, b, rng=rng, boot_rng=boot_rng, bootstrap=0, confidence=0.95, **opts).value
