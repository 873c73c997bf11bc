"""Divergence and quality estimators: one implementation, used by training, the evaluator and the server.

No torch here (numpy, scipy and POT only; POT is imported with its torch/jax/tf backends disabled): the
server imports this module.

Entry point: `estimate(metric, p, q, seed=..., bootstrap=..., confidence=...) -> Estimate`, where P is the
reference ("real") side and Q the model ("fake") side, as in EvaluateDivergence. `METRICS` maps each name to
a `Metric` that says what P and Q must be (`Metric.input`), the unit, the formula with its bias, and how the
interval is made (`Metric.interval`); `metrics_table_markdown()` renders the table for the README. Plain
helpers (`class_histogram`, `classes_covered`, `conditional_accuracy`, `frechet_distance`, `kid`,
`precision_recall`, `density_coverage`, `mixture_metrics`, `default_metrics`) give numbers without intervals;
`Gaussian`, `gaussian_kl` and `gaussian_w2_squared` are the closed forms the tests compare against.

Intervals (all seeded; how each was made is in `Estimate.note`):
- percentile bootstrap where resampling is cheap and valid (histogram counts, Monte Carlo terms, mode
  assignments, critic scores, 1-D W1), widened to contain the point estimate: a biased estimator (plug-in KL)
  otherwise gets an interval that excludes it;
- Student-t from 10 disjoint random groups for k-NN estimators (resampling with replacement makes zero
  distances, and resampling per-point terms with the neighbours fixed was measured 3x too narrow);
- normal intervals from a delta method (exact and sliced W1), a U-statistic variance (KID) or a capped
  bootstrap's standard error (Frechet distance), where a full bootstrap would cost too much.
`bootstrap=0` skips the interval (ci_low = ci_high = value). Values may be +inf (plug-in KL with an empty bin,
atoms against a density), with the reason in `note`; they are never NaN. Estimates of quantities with known
bounds (KL >= 0, JS <= log 2) are clipped and the raw value is given in the note.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
from scipy import special, stats

LOG2 = math.log(2.0)
INPUTS = ("histogram", "samples", "features", "density", "critic")
MAX_BOOTSTRAP = 10_000
W1_MAX_POINTS = 2_000        # exact OT (POT ot.emd2) runs on a seeded subsample of at most this many points
FRECHET_MAX_BOOTSTRAP = 25   # each resample refits two covariances (float32) and two eigendecompositions
QUADRATIC_MAX_N = 20_000     # k-NN metrics cost O(n^2 d): refuse larger inputs rather than run for minutes
SORT_MAX_N = 200_000         # sliced/1-D W1 hold (n, projections) sorted arrays
DUPLICATE_LIMIT = 32         # k-NN KL: more exact copies of one point than this means atoms, not a density


# --- results and errors ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """One estimated quantity with its interval. `value` may be +inf (see `note`), never NaN."""

    metric: str
    value: float
    ci_low: float
    ci_high: float
    confidence: float
    n_p: int           # points (or counts) used from P; 0 when P is an exact distribution
    n_q: int           # the same for Q
    estimator: str     # e.g. "k-NN (Wang, Kulkarni & Verdu 2009), k=5"
    unit: str          # "nats", "bits", "fraction", "feature units^2", ...
    lower_bound: bool = False  # True for variational lower bounds (critic-based estimates)
    note: str = ""

    def __post_init__(self):
        for name in ("value", "ci_low", "ci_high", "confidence"):
            if math.isnan(getattr(self, name)):
                raise ValueError(f"Estimate.{name} is NaN for metric {self.metric}: this is a bug in training.metrics")

    def as_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: infinities become the strings "inf" / "-inf" (JSON has no infinity)."""
        out = asdict(self)
        for key in ("value", "ci_low", "ci_high"):
            if math.isinf(out[key]):
                out[key] = "inf" if out[key] > 0 else "-inf"
        return out


class MetricError(ValueError):
    """An unknown metric name or an impossible request (wrong input kind, too few points, ...).

    The server maps it to INVALID_ARGUMENT; the message names the field and the reason.
    """


@dataclass(frozen=True)
class Metric:
    name: str
    input: str          # one of INPUTS: what P and Q must be
    unit: str
    description: str    # formula and bias, shown in the README
    estimator: str      # short label copied into Estimate.estimator
    fn: Callable[..., "_Result"] = field(repr=False, compare=False)
    options: tuple[str, ...] = ()   # accepted keyword options (anything else is a MetricError)
    max_n: int | None = None        # refuse inputs larger than this (cost)
    lower_bound: bool = False
    interval: str = ""              # how the confidence interval is made


@dataclass
class _Result:
    value: float
    ci: tuple[float, float]
    n_p: int
    n_q: int
    note: str = ""
    estimator: str = ""


# --- small numeric helpers ------------------------------------------------------------------------

def _percentile_ci(replicates: np.ndarray, value: float, confidence: float) -> tuple[float, float]:
    """Nearest-rank percentile interval (no interpolation, so +inf replicates cannot make NaN), widened
    to contain the point estimate."""
    r = np.sort(np.asarray(replicates, np.float64))
    r = r[~np.isnan(r)]
    if len(r) == 0:
        return value, value
    alpha = (1.0 - confidence) / 2.0
    lo = float(r[int(math.floor(alpha * (len(r) - 1)))])
    hi = float(r[int(math.ceil((1.0 - alpha) * (len(r) - 1)))])
    return min(lo, value), max(hi, value)


def _normal_ci(value: float, se: float, confidence: float) -> tuple[float, float]:
    if not math.isfinite(value):
        return value, value
    z = stats.norm.ppf(0.5 + confidence / 2.0)
    return value - z * se, value + z * se


def _boot_mean(terms: np.ndarray, rng: np.random.Generator, bootstrap: int) -> np.ndarray:
    """(bootstrap,) means of `terms` over resampled points, vectorised in blocks to bound memory."""
    n = len(terms)
    out = np.empty(bootstrap)
    block = max(1, (1 << 22) // max(n, 1))
    for start in range(0, bootstrap, block):
        stop = min(bootstrap, start + block)
        out[start:stop] = terms[rng.integers(0, n, size=(stop - start, n))].mean(1)
    return out


def _clip(value: float, ci: tuple[float, float], lo: float, hi: float, notes: list[str]) -> tuple[float, tuple]:
    """Clip an estimate of a quantity known to lie in [lo, hi] (KL >= 0, JS <= log 2); the raw estimate goes
    in the note, since a value outside the range is the estimator's bias showing."""
    if lo <= value <= hi:
        return value, (max(ci[0], lo), min(ci[1], hi))
    notes.insert(0, f"raw estimate {value:.4g} is outside [{lo:.4g}, {hi:.4g}] (estimator bias/noise), clipped")
    clipped = min(max(value, lo), hi)
    return clipped, (min(max(ci[0], lo), hi), min(max(ci[1], lo), hi))


def _boot_note(bootstrap: int, what: str = "points") -> str:
    return f"interval: percentile bootstrap, {bootstrap} resamples of the {what}, seeded"


SPLIT_GROUPS = 10


def _split_ci(estimator: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray, value: float,
              rng: np.random.Generator, confidence: float, min_size: int) -> tuple[tuple[float, float], str]:
    """Interval for a k-NN estimator whose terms share neighbours (so resampling points with the neighbour
    structure held fixed is too narrow, and resampling with replacement creates zero distances).

    1. Split P and Q at random into G disjoint groups (G = 10, fewer if a group would hold < min_size points).
    2. Run the estimator on each group: G independent estimates at size n/G.
    3. The estimator's variance falls as 1/n, so var(full) ~ var(group estimates) / G: a Student-t interval.
    """
    groups = min(SPLIT_GROUPS, len(a) // min_size, len(b) // min_size)
    if groups < 2:
        return (value, value), f"no interval: too few points for {min_size}-point groups"
    perm_a = rng.permutation(len(a))
    perm_b = perm_a if len(a) == len(b) else rng.permutation(len(b))  # equal sizes: paired, as elsewhere
    vals = [estimator(a[np.sort(ia)], b[np.sort(ib)])
            for ia, ib in zip(np.array_split(perm_a, groups), np.array_split(perm_b, groups))]
    se = float(np.std(vals, ddof=1)) / math.sqrt(groups)
    half = stats.t.ppf(0.5 + confidence / 2.0, groups - 1) * se
    note = (f"interval: Student-t, variance from {groups} disjoint random groups of ~{len(a) // groups} points "
            f"(var / {groups}), seeded")
    return (value - half, value + half), note


def _digest(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    h = hashlib.blake2b(digest_size=16)
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.view(np.uint8).reshape(-1))
    return h.digest()


def _log_unit_ball(d: int) -> float:
    """log of the volume of the unit ball in R^d."""
    return 0.5 * d * math.log(math.pi) - special.gammaln(0.5 * d + 1.0)


# --- input validation -----------------------------------------------------------------------------

def _counts(x: Any, side: str, metric: str, exact: bool) -> np.ndarray:
    try:
        c = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MetricError(f"{side}: metric {metric} needs a histogram (count vector); got {type(x).__name__}") from e
    if c.ndim != 1:
        raise MetricError(
            f"{side}: metric {metric} takes a histogram (count vector of shape (K,)); got an array of shape "
            f"{c.shape}. Bin the points first (class_histogram of evaluator labels, or the mixture mode histogram)")
    if len(c) < 2:
        raise MetricError(f"{side}: a histogram needs at least 2 bins, got {len(c)}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise MetricError(f"{side}: histogram counts must be finite and >= 0")
    if c.sum() <= 0:
        raise MetricError(f"{side}: histogram is empty (all counts are 0)")
    if not exact and np.any(c != np.round(c)):
        raise MetricError(f"{side}: histogram counts must be whole numbers (the interval resamples them); "
                          f"pass {side.lower()}_exact=True if this side is a known probability vector")
    return c


def _points(x: Any, side: str, metric: str, min_n: int = 2, max_n: int | None = None) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MetricError(f"{side}: metric {metric} needs an array of points (N, D); got {type(x).__name__}") from e
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise MetricError(f"{side}: metric {metric} needs points of shape (N, D); got shape {a.shape} "
                          "(flatten images to (N, H*W*C) or use evaluator features)")
    if a.shape[1] == 0:
        raise MetricError(f"{side}: points have 0 dimensions")
    if len(a) < min_n:
        raise MetricError(f"{side}: metric {metric} needs at least {min_n} points, got {len(a)}")
    if max_n is not None and len(a) > max_n:
        raise MetricError(f"{side}: {len(a)} points is over the limit of {max_n} for metric {metric} "
                          "(its cost grows as n^2); subsample first")
    if not np.all(np.isfinite(a)):
        bad = int((~np.isfinite(a)).any(1).sum())
        raise MetricError(f"{side}: {bad} point(s) contain NaN or inf")
    return a


def _pair(p, q, metric: Metric, min_n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    a = _points(p, "P", metric.name, min_n, metric.max_n)
    b = _points(q, "Q", metric.name, min_n, metric.max_n)
    if a.shape[1] != b.shape[1]:
        raise MetricError(f"P and Q must have the same dimension: P has {a.shape[1]}, Q has {b.shape[1]}")
    return a, b


def _scores(x: Any, side: str, metric: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MetricError(f"{side}: metric {metric} needs critic scores (N,); got {type(x).__name__}") from e
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise MetricError(f"{side}: metric {metric} needs one critic score per sample, shape (N,); got {a.shape}")
    if len(a) < 2:
        raise MetricError(f"{side}: metric {metric} needs at least 2 scores, got {len(a)}")
    if not np.all(np.isfinite(a)):
        raise MetricError(f"{side}: critic scores contain NaN or inf")
    return a


def _is_density(obj: Any) -> bool:
    return callable(getattr(obj, "log_density", None)) and callable(getattr(obj, "sample", None))


# --- histograms (plug-in) -------------------------------------------------------------------------

def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) along the last axis of probability arrays; 0 log 0 = 0, and p > 0 where q = 0 gives +inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(-1)


def _js_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = 0.5 * (p + q)
    return np.clip(0.5 * _kl_rows(p, m) + 0.5 * _kl_rows(q, m), 0.0, LOG2)


def _tv_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return 0.5 * np.abs(p - q).sum(-1)


_HIST_FUNCS = {
    "kl_pq": lambda p, q: _kl_rows(p, q),
    "kl_qp": lambda p, q: _kl_rows(q, p),
    "js": _js_rows,
    "js_bits": lambda p, q: _js_rows(p, q) / LOG2,
    "tv": _tv_rows,
}


def _bin_names(idx: np.ndarray, labels) -> str:
    names = [str(labels[i]) if labels is not None else str(int(i)) for i in idx]
    return ", ".join(names[:12]) + (f", ... ({len(names)} bins)" if len(names) > 12 else "")


def _histogram_metric(name: str):
    func = _HIST_FUNCS[name]

    def run(p, q, *, rng, boot_rng, bootstrap, confidence, p_exact=False, q_exact=False, labels=None):
        cp = _counts(p, "P", name, p_exact)
        cq = _counts(q, "Q", name, q_exact)
        if len(cp) != len(cq):
            raise MetricError(f"P and Q histograms must have the same number of bins: {len(cp)} vs {len(cq)}")
        if labels is not None and len(labels) != len(cp):
            raise MetricError(f"labels: {len(labels)} names for {len(cp)} bins")
        pp, qq = cp / cp.sum(), cq / cq.sum()
        value = float(func(pp, qq))
        notes = []
        # Which side must have mass where the other has none for this divergence to be infinite.
        for a, b, a_name, b_name, which in ((pp, qq, "P", "Q", "kl_pq"), (qq, pp, "Q", "P", "kl_qp")):
            if name == which and math.isinf(value):
                empty = np.flatnonzero((a > 0) & (b == 0))
                notes.append(
                    f"+inf: {b_name} has zero count in bin(s) [{_bin_names(empty, labels)}] where {a_name} has mass "
                    f"(plug-in estimate: the true value may be finite if {b_name}'s mass there is only unobserved)")
        if bootstrap > 0 and not (p_exact and q_exact):
            bp = (_resample_counts(boot_rng, cp, bootstrap) if not p_exact else np.broadcast_to(pp, (bootstrap, len(pp))))
            bq = (_resample_counts(boot_rng, cq, bootstrap) if not q_exact else np.broadcast_to(qq, (bootstrap, len(qq))))
            ci = _percentile_ci(func(bp, bq), value, confidence)
            notes.append(_boot_note(bootstrap, "counts (multinomial)"))
        else:
            ci = (value, value)
            notes.append("no interval: both sides exact" if p_exact and q_exact else "no interval (bootstrap=0)")
        return _Result(value, ci, 0 if p_exact else int(cp.sum()), 0 if q_exact else int(cq.sum()), "; ".join(notes))

    return run


def _resample_counts(rng: np.random.Generator, counts: np.ndarray, size: int) -> np.ndarray:
    """(size, K) resampled probability vectors: multinomial draws of sum(counts) with the observed frequencies
    (the bootstrap of the underlying labels, done on their histogram)."""
    n = int(round(counts.sum()))
    return rng.multinomial(n, counts / counts.sum(), size=size) / n


# --- nearest neighbours ---------------------------------------------------------------------------

_TREE_MAX_DIM = 8  # cKDTree is fast in low dimension; above that, chunked distance matrices win


def _sq_norms(a: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, a)


def _chunks(n_rows: int, n_cols: int, budget: int = 1 << 23):
    step = max(1, budget // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def _atoms_message(k: int, m: int, copies: int) -> str:
    return (f"too few distinct points for k={k}: {m} points, up to {copies} exact copies of one point. The samples "
            "hold atoms; k-NN estimators assume continuous distributions (use a histogram metric)")


def _kth_nonzero_distance(query: np.ndarray, ref: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query point: distance to its k-th nearest point of `ref` that is not an exact copy of it,
    and the number of exact copies in `ref` (which includes the query itself when ref is the query set)."""
    n, m = len(query), len(ref)
    if query.shape[1] <= _TREE_MAX_DIM:
        from scipy.spatial import cKDTree

        tree = cKDTree(ref)
        dup = tree.query_ball_point(query, r=0.0, return_length=True).astype(np.int64)
        kk = int(dup.max()) + k
        if kk > m:
            raise MetricError(_atoms_message(k, m, int(dup.max())))
        dist, _ = tree.query(query, k=kk)
        dist = dist.reshape(n, kk)
        return dist[np.arange(n), dup + k - 1], dup
    # Dense path in float32 on centred data (the distances' rounding error is ~1e-7 of the squared norms);
    # "exact copy" then means a squared distance below 1e-6 of the squared norms.
    centre = ref.mean(0)
    q32 = np.ascontiguousarray(query - centre, np.float32)
    r32 = np.ascontiguousarray(ref - centre, np.float32)
    out = np.empty(n)
    dup = np.empty(n, np.int64)
    rn, qn = _sq_norms(r32), _sq_norms(q32)
    for s, e in _chunks(n, m):
        d2 = qn[s:e, None] + rn[None] - 2.0 * (q32[s:e] @ r32.T)  # (c, m)
        same = d2 <= 1e-6 * (qn[s:e, None] + rn[None]) + 1e-30
        dup[s:e] = same.sum(1)
        d2[same] = np.inf
        if k > m - dup[s:e].max():
            raise MetricError(_atoms_message(k, m, int(dup[s:e].max())))
        out[s:e] = np.sqrt(np.maximum(np.partition(d2, k - 1, axis=1)[:, k - 1], 0.0))
    return out, dup


def _atoms(x: np.ndarray) -> np.ndarray:
    """Copy counts of the points of x repeated exactly more than DUPLICATE_LIMIT times (atoms), or empty."""
    if len(x) <= DUPLICATE_LIMIT:
        return np.zeros(0, np.int64)
    counts = np.unique(x, axis=0, return_counts=True)[1]
    return counts[counts > DUPLICATE_LIMIT]


def _knn_kl_terms(x: np.ndarray, y: np.ndarray, k: int, names: tuple[str, str] = ("P", "Q")):
    """Per-point terms of the k-NN estimate of KL(X || Y) from x (n, d) and y (m, d), and a note; the terms
    are None when the divergence is +inf (X has atoms, Y does not).

    Wang, Kulkarni & Verdu (2009), eq. (5) with k_i = l_i = k:
        KL = d/n sum_i log(nu_k(i) / rho_k(i)) + log(m / (n - 1)),
    rho_k(i) the distance from x_i to its k-th neighbour among the other x's, nu_k(i) to its k-th neighbour
    among the y's. Exact copies of x_i (distance 0) are left out of both neighbour sets and of the counts
    n - 1 and m: the estimator assumes continuous densities, and this makes identical inputs give exactly 0.
    """
    n, d = x.shape
    # 1. Atoms (a point repeated exactly, e.g. a collapsed generator): X's atoms make KL(X||Y) = +inf when Y
    #    has none; atoms in Y leave the estimator without a density to compare against.
    atoms_y = _atoms(y)
    if len(atoms_y):
        raise MetricError(f"{names[1]}: the samples hold atoms (a point repeated {int(atoms_y.max())} times); k-NN "
                          "divergence estimators assume continuous distributions; use a histogram metric")
    atoms_x = _atoms(x)
    if len(atoms_x):
        return None, (f"+inf: {names[0]} puts mass {atoms_x.sum() / n:.3g} on {len(atoms_x)} point(s) repeated exactly "
                      f"(up to {int(atoms_x.max())} copies) where {names[1]} has no atom")
    # 2. Neighbour distances, exact copies left out.
    rho, dup_x = _kth_nonzero_distance(x, x, k)
    nu, dup_y = _kth_nonzero_distance(x, y, k)
    terms = d * (np.log(nu) - np.log(rho)) + np.log((len(y) - dup_y) / (n - dup_x))
    copies = int((dup_x > 1).sum() + (dup_y > 0).sum())
    note = f"{copies} exact duplicate(s) left out of the neighbour sets" if copies else ""
    return terms, note


def _knn_kl_metric(direction: str):
    def run(p, q, *, rng, boot_rng, bootstrap, confidence, k=1):
        m = METRICS[f"knn_kl_{direction}"]
        k = _check_k(k)
        a, b = _pair(p, q, m, min_n=k + 1)
        x, y = (a, b) if direction == "pq" else (b, a)
        names = ("P", "Q") if direction == "pq" else ("Q", "P")
        terms, dup_note = _knn_kl_terms(x, y, k, names)
        estimator = f"k-NN (Wang, Kulkarni & Verdu 2009), k={k}"
        if terms is None:
            return _Result(math.inf, (math.inf, math.inf), len(a), len(b), dup_note, estimator)
        value = float(terms.mean())
        notes = [dup_note] if dup_note else []
        if x.shape[1] > 10:
            notes.append(f"d={x.shape[1]}: k-NN distances concentrate in high dimension and the d*log ratio amplifies "
                         "their bias (N(0,I) vs N(0.1,1.21I) in d=128, n=10,000: 5.7 for a true 1.6); prefer "
                         "frechet/kid/precision/recall on features")
        if bootstrap > 0:
            ci, note = _split_ci(lambda u, v: float(_knn_kl_terms(u, v, k, names)[0].mean()), x, y, value, boot_rng,
                                 confidence, min_size=max(k + 2, 20))
            notes.append(note)
        else:
            ci = (value, value)
        value, ci = _clip(value, ci, 0.0, math.inf, notes)
        return _Result(value, ci, len(a), len(b), "; ".join(notes), estimator)

    return run


def _int_option(name: str, value, lo: int, hi: int) -> int:
    """An integer option in lo..hi, or a MetricError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise MetricError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    return int(value)


def _check_k(k) -> int:
    return _int_option("k", k, 1, 1000)


# --- Wasserstein ----------------------------------------------------------------------------------

def _same_subsample(rng: np.random.Generator, n_p: int, n_q: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded subsample indices. With equal sizes both sides use the same indices: the choice of indices is
    independent of the data, so this is as valid as two independent draws, and identical inputs stay identical."""
    ip = np.sort(rng.choice(n_p, cap, replace=False)) if n_p > cap else np.arange(n_p)
    if n_q == n_p:
        return ip, ip
    iq = np.sort(rng.choice(n_q, cap, replace=False)) if n_q > cap else np.arange(n_q)
    return ip, iq


def _ot():
    """POT, imported on first use without its torch/jax/tensorflow/cupy backends: POT imports every array
    library it finds, and the server must not load torch (2-3 s of import time is POT's own, with sklearn)."""
    import os

    for lib in ("PYTORCH", "JAX", "CUPY", "TENSORFLOW"):
        os.environ.setdefault(f"POT_BACKEND_DISABLE_{lib}", "1")
    import ot

    return ot


def _w1_exact(p, q, *, rng, boot_rng, bootstrap, confidence, max_points=W1_MAX_POINTS):
    ot = _ot()
    m = METRICS["w1_exact"]
    a, b = _pair(p, q, m, min_n=1)
    max_points = _int_option("max_points", max_points, 2, 10_000)
    ip, iq = _same_subsample(rng, len(a), len(b), max_points)
    x, y = a[ip], b[iq]
    cost = ot.dist(x, y, metric="euclidean")  # (n, m)
    wa, wb = np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y))
    value, log = ot.emd2(wa, wb, cost, numItermax=10**7, log=True)
    value = float(max(value, 0.0))
    notes = []
    if len(x) < len(a) or len(y) < len(b):
        notes.append(f"exact OT on a seeded subsample of {len(x)} x {len(y)} points (cap {max_points})")
    # W1 = mean_i u(x_i) + mean_j v(y_j) at the optimal dual potentials (u, v), which are the estimator's
    # influence functions (delta method; CLT of del Barrio, Gonzalez-Sanz & Loubes 2021 for empirical OT).
    se = math.sqrt(np.var(log["u"]) / len(x) + np.var(log["v"]) / len(y))
    ci = _normal_ci(value, se, confidence)
    ci = (max(ci[0], 0.0), ci[1])
    notes.append("interval: normal, delta method with the OT dual potentials (no resampling: emd2 is costly)")
    notes.append("bias: W1 between finite samples overestimates W1(P,Q) (by ~n^(-1/d) in d dimensions)")
    return _Result(value, ci, len(a), len(b), "; ".join(notes), "exact OT (POT ot.emd2), Euclidean cost")


def _w1_from_cdfs(order: np.ndarray, gaps: np.ndarray, signed_w: np.ndarray) -> np.ndarray:
    """W1 between two weighted 1-D measures as the integral of |F - G|, for pooled points already sorted:
    order (L, n+m) sorts each projection, gaps (L, n+m-1) are the sorted spacings, signed_w (B, n+m) holds
    P's weights and minus Q's. Returns (B, L)."""
    out = np.empty((len(signed_w), len(order)))
    for j in range(len(order)):
        cdf_diff = np.cumsum(signed_w[:, order[j]], axis=1)[:, :-1]  # (B, n+m-1)
        out[:, j] = np.abs(cdf_diff) @ gaps[j]
    return out


def _w1_influence(order: np.ndarray, gaps: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Per direction, W1 = sum_k |D_k| g_k with D = F_P - F_Q on the sorted pooled grid. Its influence
    function for a point at sorted position j is R_j = sum_{k >= j} sign(D_k) g_k (centred over P for P's
    points, negated for Q's). Returns (L,) the W1 per direction and (n+m,) R averaged over directions."""
    w = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    per_direction = np.empty(len(order))
    infl = np.zeros(n + m)
    for j in range(len(order)):
        diff = np.cumsum(w[order[j]])[:-1]  # (n+m-1,)
        per_direction[j] = np.abs(diff) @ gaps[j]
        r = np.zeros(n + m)
        r[:-1] = np.cumsum((np.sign(diff) * gaps[j])[::-1])[::-1]
        infl[order[j]] += r / len(order)
    return per_direction, infl


def _sliced_w(p, q, *, rng, boot_rng, bootstrap, confidence, projections=100):
    ot = _ot()
    m = METRICS["sliced_w"]
    a, b = _pair(p, q, m, min_n=1)
    L = _int_option("projections", projections, 2, 5000)
    theta = ot.sliced.get_random_projections(a.shape[1], L, seed=int(rng.integers(2**31)))  # (d, L)
    value = float(ot.sliced_wasserstein_distance(a, b, n_projections=L, p=1, projections=theta))
    # Interval by the delta method: project once, sort once per direction, then the influence of each point.
    pooled = np.concatenate([a, b]) @ theta  # (n+m, L)
    order = np.argsort(pooled, axis=0).T  # (L, n+m)
    gaps = np.diff(np.take_along_axis(pooled.T, order, axis=1), axis=1)  # (L, n+m-1)
    per_direction, infl = _w1_influence(order, gaps, len(a), len(b))
    var = (np.var(infl[:len(a)]) / len(a) + np.var(infl[len(a):]) / len(b)  # sampling of the points
           + np.var(per_direction, ddof=1) / L)                            # sampling of the directions
    ci = _normal_ci(value, math.sqrt(var), confidence)
    ci = (max(ci[0], 0.0), ci[1])
    notes = [f"sliced W1: mean over {L} seeded random directions of the 1-D W1 of the projections",
             "interval: normal, delta method (influence of each point on the 1-D W1s) plus the spread over "
             "directions / L"]
    return _Result(value, ci, len(a), len(b), "; ".join(notes), f"sliced Wasserstein (POT), p=1, {L} projections")


def _same_data(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _w1_1d(p, q, *, rng, boot_rng, bootstrap, confidence):
    m = METRICS["w1_1d"]
    a, b = _pair(p, q, m, min_n=1)
    if a.shape[1] != 1:
        raise MetricError(f"w1_1d is for 1-D samples; got dimension {a.shape[1]} (use w1_exact or sliced_w)")
    x, y = a[:, 0], b[:, 0]
    value = float(stats.wasserstein_distance(x, y))
    if bootstrap > 0:
        pooled = np.concatenate([x, y])
        order = np.argsort(pooled)[None]
        gaps = np.diff(pooled[order[0]])[None]
        same = len(a) == len(b)  # paired resampling, as in sliced_w
        wp = boot_rng.multinomial(len(x), np.full(len(x), 1.0 / len(x)), size=bootstrap) / len(x)
        wq = wp if same else boot_rng.multinomial(len(y), np.full(len(y), 1.0 / len(y)), size=bootstrap) / len(y)
        reps = _w1_from_cdfs(order, gaps, np.concatenate([wp, -wq], axis=1))[:, 0]
        ci = _percentile_ci(reps, value, confidence)
        note = _boot_note(bootstrap)
    else:
        ci, note = (value, value), ""
    return _Result(value, ci, len(a), len(b), note, "scipy.stats.wasserstein_distance (exact in 1-D)")


# --- Gaussians: closed forms and a density class --------------------------------------------------

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
        from scipy.linalg import solve_triangular

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


def _frechet_from_stats(mu1, s1, mu2, s2) -> float:
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
    return _frechet_from_stats(p.mean, p.cov, q.mean, q.cov)


# --- feature metrics: Frechet distance, KID -------------------------------------------------------

def _mean_cov(x: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    if w is None:
        mu = x.mean(0)
        xc = x - mu
        return mu, (xc.T @ xc) / (len(x) - 1)
    mu = w @ x / w.sum()
    xc = x - mu
    return mu.astype(np.float64), ((xc.T * w) @ xc / (w.sum() - 1)).astype(np.float64)


def frechet_distance(a, b) -> float:
    """Frechet distance between Gaussians fitted to features a (N, F) and b (M, F) (FID's formula, on
    whatever features are given; on evaluator features call it "Frechet distance on evaluator features")."""
    x = _points(a, "P", "frechet")
    y = _points(b, "Q", "frechet")
    if x.shape[1] != y.shape[1]:
        raise MetricError(f"P and Q must have the same dimension: P has {x.shape[1]}, Q has {y.shape[1]}")
    return _frechet_from_stats(*_mean_cov(x), *_mean_cov(y))


def _frechet(p, q, *, rng, boot_rng, bootstrap, confidence):
    m = METRICS["frechet"]
    a, b = _pair(p, q, m)
    value = _frechet_from_stats(*_mean_cov(a), *_mean_cov(b))
    b_eff = min(bootstrap, FRECHET_MAX_BOOTSTRAP)
    notes = ["squared W2 between Gaussians fitted to the features; biased upward at finite n"]
    if b_eff > 1:
        same = len(a) == len(b)  # paired resampling, as in sliced_w
        a32, b32 = a.astype(np.float32), b.astype(np.float32)  # only the spread of the resamples is used
        reps = []
        for _ in range(b_eff):
            wa = np.bincount(boot_rng.integers(0, len(a), len(a)), minlength=len(a)).astype(np.float32)
            wb = wa if same else np.bincount(boot_rng.integers(0, len(b), len(b)), minlength=len(b)).astype(np.float32)
            reps.append(_frechet_from_stats(*_mean_cov(a32, wa), *_mean_cov(b32, wb)))
        # Resamples hold repeated points, so their Frechet distances carry extra upward bias: a percentile
        # interval would sit above the estimate. Use their spread only (normal interval).
        ci = _normal_ci(value, float(np.std(reps, ddof=1)), confidence)
        ci = (max(ci[0], 0.0), ci[1])
        notes.append(f"interval: normal, standard error from {b_eff} bootstrap resamples, seeded"
                     + (" (capped: each refits two covariances)" if b_eff < bootstrap else ""))
    else:
        ci = (value, value)
    return _Result(value, ci, len(a), len(b), "; ".join(notes), "Frechet distance between fitted Gaussians")


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x.y / d + 1)^3 for float32 inputs (the products in float32, the rest in float64)."""
    g = (x @ y.T).astype(np.float64)
    return (g / x.shape[1] + 1.0) ** 3


def _kid_subsets(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, subsets: int, subset_size: int):
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 on `subsets` random subsets (Binkowski et al. 2018, as in
    their reference code). Returns per-subset estimates and the first-order (Hoeffding) variance terms."""
    m = subset_size
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    same = len(x) == len(y)  # equal sizes: the same subset indices on both sides (data-independent choice)
    est, var_gx, var_gy = [], [], []
    for _ in range(subsets):
        ix = rng.choice(len(x), m, replace=False)
        iy = ix if same else rng.choice(len(y), m, replace=False)
        xs, ys = x[ix], y[iy]
        kxx, kyy, kxy = _poly_kernel(xs, xs), _poly_kernel(ys, ys), _poly_kernel(xs, ys)
        rxx = (kxx.sum(1) - np.diag(kxx)) / (m - 1)  # (m,) mean similarity of each x to the other x's
        ryy = (kyy.sum(1) - np.diag(kyy)) / (m - 1)
        est.append(rxx.mean() + ryy.mean() - 2.0 * kxy.mean())
        var_gx.append(np.var(rxx - kxy.mean(1), ddof=1))
        var_gy.append(np.var(ryy - kxy.mean(0), ddof=1))
    return np.array(est), float(np.mean(var_gx)), float(np.mean(var_gy))


def kid(a, b, *, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance's estimator (unbiased MMD^2, cubic polynomial kernel) on given features;
    the value of estimate("kid", a, b, seed=seed)."""
    return estimate("kid", a, b, seed=seed, bootstrap=0, subsets=subsets, subset_size=subset_size).value


def _kid(p, q, *, rng, boot_rng, bootstrap, confidence, subsets=50, subset_size=1000):
    met = METRICS["kid"]
    a, b = _pair(p, q, met)
    subsets = _int_option("subsets", subsets, 2, 10_000)
    m = min(_int_option("subset_size", subset_size, 2, 100_000), len(a), len(b))
    est, vgx, vgy = _kid_subsets(a, b, rng, int(subsets), m)
    value = float(est.mean())
    # Variance of the mean of S subset U-statistics (an incomplete U-statistic): the full-data first-order
    # term 4 Var(g)/n per side, plus the between-subset spread beyond it divided by S.
    v_full = 4.0 * vgx / len(a) + 4.0 * vgy / len(b)
    v_sub = float(np.var(est, ddof=1)) if len(est) > 1 else 0.0
    se = math.sqrt(v_full + max(v_sub - v_full, 0.0) / len(est))
    ci = _normal_ci(value, se, confidence)
    note = (f"mean of {len(est)} subsets of {m}; interval: normal, first-order U-statistic variance plus "
            "subset spread; unbiased, so it can be slightly negative when P = Q")
    return _Result(value, ci, len(a), len(b), note, f"unbiased MMD^2, kernel (x.y/d+1)^3 (Binkowski et al. 2018)")


# --- k-NN manifolds: precision, recall, density, coverage -----------------------------------------

_PRDC_CACHE: OrderedDict = OrderedDict()
_PRDC_LOCK = threading.Lock()


def _kth_radius_sq(x: np.ndarray, ks: list[int]) -> dict[int, np.ndarray]:
    """Squared distance from each point to its k-th nearest other point, for each k in ks (ties and copies
    count, as in the reference implementations of Kynkaanniemi et al. 2019 and Naeem et al. 2020)."""
    if x.shape[1] <= _TREE_MAX_DIM:
        from scipy.spatial import cKDTree

        dist, _ = cKDTree(x).query(x, k=max(ks) + 1)
        return {k: dist[:, k] ** 2 for k in ks}
    xn = _sq_norms(x)
    out = {k: np.empty(len(x), np.float32) for k in ks}
    for s, e in _chunks(len(x), len(x)):
        d2 = xn[s:e, None] + xn[None] - 2.0 * (x[s:e] @ x.T)
        part = np.partition(d2, ks, axis=1)  # column 0 is the point itself (distance 0)
        for k in ks:
            out[k][s:e] = np.maximum(part[:, k], 0.0)
    return out


def _prdc_compute(real: np.ndarray, fake: np.ndarray, ks: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """Per-point indicators behind precision, recall, density and coverage for each k in ks, in one pass over
    the real-fake distances (chunked, float32: the d=1,000 sanity case is 3 x 10k x 10k x 1k multiply-adds)."""
    centre = real.mean(0)
    r = np.ascontiguousarray(real - centre, np.float32)
    f = np.ascontiguousarray(fake - centre, np.float32)
    rad_r = _kth_radius_sq(r, ks)  # {k: (n_real,)}
    rad_f = _kth_radius_sq(f, ks)  # {k: (n_fake,)}
    rn, fn = _sq_norms(r), _sq_norms(f)
    inside = {k: np.empty(len(f), np.int64) for k in ks}     # real balls containing each fake point
    recalled = {k: np.zeros(len(r), bool) for k in ks}        # real point inside some fake ball
    nearest_fake = np.full(len(r), np.inf, np.float32)        # squared distance from each real point to the nearest fake
    for s, e in _chunks(len(f), len(r)):
        d2 = np.maximum(fn[s:e, None] + rn[None] - 2.0 * (f[s:e] @ r.T), 0.0)  # (c, n_real)
        np.minimum(nearest_fake, d2.min(0), out=nearest_fake)
        for k in ks:
            inside[k][s:e] = (d2 < rad_r[k][None]).sum(1)
            recalled[k] |= (d2 < rad_f[k][s:e, None]).any(0)
    return {k: {"precision": (inside[k] > 0).astype(np.float64), "density": inside[k] / k,
                "recall": recalled[k].astype(np.float64), "coverage": (nearest_fake < rad_r[k]).astype(np.float64)}
            for k in ks}


def _prdc_per_point(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """_prdc_compute with a small cache (thread-safe: the server calls from several threads). The pass also
    computes the default k's (3 for precision/recall, 5 for density/coverage), so the four metrics on one pair
    of inputs cost one pass."""
    key = (_digest(real), _digest(fake))
    with _PRDC_LOCK:
        hit = _PRDC_CACHE.get((key, k))
        if hit is not None:
            _PRDC_CACHE.move_to_end((key, k))
            return hit
    ks = sorted({k} | ({3, 5} & set(range(1, min(len(real), len(fake))))))
    computed = _prdc_compute(real, fake, ks)
    with _PRDC_LOCK:
        for kk, per_point in computed.items():
            _PRDC_CACHE[(key, kk)] = per_point
        while len(_PRDC_CACHE) > 8:
            _PRDC_CACHE.popitem(last=False)
    return computed[k]


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): the fraction of fake points inside some real
    point's k-NN ball, and of real points inside some fake point's k-NN ball."""
    x, y = _pair(real, fake, METRICS["precision"], min_n=_check_k(k) + 1)
    pp = _prdc_per_point(x, y, k)
    return float(pp["precision"].mean()), float(pp["recall"].mean())


def density_coverage(real, fake, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020): density = mean over fake points of (number of real k-NN
    balls containing it) / k; coverage = fraction of real points whose k-NN ball contains a fake point."""
    x, y = _pair(real, fake, METRICS["density"], min_n=_check_k(k) + 1)
    pp = _prdc_per_point(x, y, k)
    return float(pp["density"].mean()), float(pp["coverage"].mean())


def _prdc_metric(name: str, default_k: int):
    per_fake = name in ("precision", "density")

    def run(p, q, *, rng, boot_rng, bootstrap, confidence, k=default_k):
        k = _check_k(k)
        a, b = _pair(p, q, METRICS[name], min_n=k + 1)
        terms = _prdc_per_point(a, b, k)[name]
        value = float(terms.mean())
        if bootstrap > 0:
            ci, note = _split_ci(lambda u, v: float(_prdc_compute(u, v, [k])[k][name].mean()), a, b, value, boot_rng,
                                 confidence, min_size=max(k + 2, 50))
            if name != "density":
                ci = (max(ci[0], 0.0), min(ci[1], 1.0))
        else:
            ci, note = (value, value), ""
        cite = "Kynkaanniemi et al. 2019" if name in ("precision", "recall") else "Naeem et al. 2020"
        return _Result(value, ci, len(a), len(b), note, f"k-NN manifolds ({cite}), k={k}")

    return run


# --- known densities: Monte Carlo -----------------------------------------------------------------

def _density_side(p, metric: str):
    if not _is_density(p):
        raise MetricError(f"P: metric {metric} needs a distribution with .log_density(x) and .sample(n, seed) "
                          f"(a training.data.Mixture or training.metrics.Gaussian); got {type(p).__name__}")
    return p


def _log_q_knn(points: np.ndarray, q_samples: np.ndarray, k: int) -> np.ndarray:
    """k-NN density estimate of Q at `points`: log q(x) ~ psi(k) - log M - log V_d - d log r_k(x), with r_k the
    distance to the k-th nearest Q sample and M the number of Q samples other than copies of x (so M = m - 1
    at Q's own samples). E log q is then unbiased for fixed k as M grows (Kozachenko-Leonenko)."""
    m, d = q_samples.shape
    r, dup = _kth_nonzero_distance(points, q_samples, k)
    return special.digamma(k) - np.log(m - dup) - _log_unit_ball(d) - d * np.log(r)


_MC_DEFAULT_K = {"kl_pq": 1, "kl_qp": 3, "js": 3}


def _mc_metric(kind: str):
    """Monte Carlo KL/JS with P's exact log-density. Q's density is exact when Q is a density object too;
    otherwise it is replaced by k-NN estimates:
      KL(P||Q) = E_P[log p - log q^]  with q^ the k-NN density of Q's samples at P's samples (k=1: the bias
                 of this plug-in grows with k, as for the Wang-Kulkarni-Verdu estimator);
      KL(Q||P) = -H(Q) - E_Q log p   with H(Q) the Kozachenko-Leonenko k-NN entropy (k=3);
      JS       = H(M) - H(P)/2 - H(Q)/2, M = (P+Q)/2, with H(P) exact MC, H(Q) and H(M) Kozachenko-Leonenko
                 on Q's samples and on the pooled samples (equal sizes, so the pool is a sample of M). Plugging a
                 noisy k-NN density into log(2q/(p+q)) instead biases JS low by ~20% (measured on Gaussians).
    """
    def run(p, q, *, rng, boot_rng, bootstrap, confidence, n=None, k=_MC_DEFAULT_K[kind]):
        name = f"mc_{kind}"
        p = _density_side(p, name)
        k = _check_k(k)
        q_known = _is_density(q)
        if n is not None:
            n = _int_option("n", n, 2, 1_000_000)
        if q_known:
            n = 10_000 if n is None else int(n)
            y = np.asarray(q.sample(n, int(rng.integers(2**63))), np.float64).reshape(n, -1)
        else:
            y = _points(q, "Q", name, min_n=k + 2, max_n=QUADRATIC_MAX_N)
            atoms = _atoms(y)
            if len(atoms) and kind == "kl_qp":  # Q puts mass on single points, P has a density: infinite
                return _Result(math.inf, (math.inf, math.inf), 0, len(y),
                               f"+inf: Q puts mass {atoms.sum() / len(y):.3g} on {len(atoms)} point(s) repeated "
                               f"exactly (up to {int(atoms.max())} copies) and P has a density",
                               "Monte Carlo with P's exact log-density")
            if len(atoms):
                raise MetricError(f"Q: the samples hold atoms (a point repeated {int(atoms.max())} times); the k-NN "
                                  f"density of Q that {name} needs does not exist; use mc_kl_qp or a histogram metric")
            if kind == "js" and n is not None and n != len(y):
                raise MetricError(f"mc_js with Q given as samples draws as many P samples as Q has ({len(y)}); "
                                  f"n={n} would make the pooled sample a different mixture")
        n_p = len(y) if n is None else int(n)
        x = np.asarray(p.sample(n_p, int(rng.integers(2**63))), np.float64).reshape(n_p, -1)
        if x.shape[1] != y.shape[1]:
            raise MetricError(f"P and Q must have the same dimension: P has {x.shape[1]}, Q has {y.shape[1]}")
        d = x.shape[1]
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
                terms = [(lp_x - _log_q_knn(x, y, k), 1.0)]
                estimator = f"Monte Carlo with P's exact log-density, k-NN density of Q (k={k})"
            elif kind == "kl_qp":
                terms = [(_log_q_knn(y, y, k) - lp_y, 1.0)]
                estimator = f"Monte Carlo with P's exact log-density, Kozachenko-Leonenko entropy of Q (k={k})"
            else:
                pooled = np.concatenate([x, y])
                terms = [(-_log_q_knn(pooled, pooled, k), 1.0),   # H(M)
                         (lp_x, 0.5),                              # -H(P)/2
                         (_log_q_knn(y, y, k), 0.5)]               # -H(Q)/2
                estimator = f"H(M) - H(P)/2 - H(Q)/2: P exact, Kozachenko-Leonenko entropies (k={k})"
        terms = [(np.where(np.isnan(t), np.inf, t), c) for t, c in terms]  # -inf - -inf: neither density there
        value = float(sum(c * t.mean() for t, c in terms))
        notes = []
        if math.isinf(value):
            side = "Q" if kind == "kl_pq" else "P"
            notes.append(f"+inf: {side}'s density is 0 at some samples of the other side")
        if bootstrap > 0 and math.isfinite(value):
            reps = sum(c * _boot_mean(t, boot_rng, bootstrap) for t, c in terms)
            ci = _percentile_ci(reps, value, confidence)
            notes.append(_boot_note(bootstrap, "Monte Carlo terms")
                         + (" (each term set resampled independently)" if len(terms) > 1 else ""))
        else:
            ci = (value, value)
        value, ci = _clip(value, ci, 0.0, LOG2 if kind == "js" else math.inf, notes)
        if not q_known:
            notes.append("Q's density is unknown: k-NN estimates for Q (see the metric description for the bias)")
        return _Result(value, ci, n_p, len(y), "; ".join(notes), estimator)

    return run


# --- 2-D mixtures: the VEEGAN/PacGAN mode protocol ------------------------------------------------

def _mode_assignments(points: np.ndarray, mixture) -> tuple[np.ndarray, np.ndarray]:
    """(nearest mode index, high quality?) per point: high quality = within 3 std of the nearest mean."""
    idx, dist = mixture.nearest_mode(points)
    return idx, dist <= 3.0 * mixture.std


def _mode_stats(codes: np.ndarray, num_modes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From per-point codes (mode index for high-quality points, num_modes otherwise), rows of resamples
    (B, N): modes covered, high-quality fraction, reverse KL (B,)."""
    b, n = codes.shape
    offsets = (np.arange(b) * (num_modes + 1))[:, None]
    counts = np.bincount((codes + offsets).reshape(-1), minlength=b * (num_modes + 1)).reshape(b, num_modes + 1)
    hq = counts[:, :num_modes].astype(np.float64)
    total = hq.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = hq / total[:, None]
        rkl = _kl_rows(freq, np.full(num_modes, 1.0 / num_modes))
    rkl = np.where(total > 0, rkl, np.inf)
    return (hq > 0).sum(1).astype(np.float64), total / n, rkl


def mixture_metrics(points, mixture) -> dict[str, float]:
    """VEEGAN/PacGAN protocol on generated 2-D points (the papers use 2,500): {"modes": modes covered (a mode is
    covered by >= 1 high-quality sample), "high_quality": fraction within 3 std of the nearest mean,
    "reverse_kl": KL(mode histogram of the high-quality samples || uniform over modes)}, plus
    "spread": the RMS distance of the high-quality samples to their mean relative to the data's (1 for a perfect
    sampler; < 1: too concentrated inside the modes, which is how a sampler beats the perfect sampler's 98.9% high
    quality; > 1: too wide; nan without high-quality samples). For a 2-D isotropic Gaussian, d^2 / std^2 is
    chi-square with 2 degrees of freedom, so E[d^2 | d <= 3 std] = std^2 (2 - 9 e^-4.5 / (1 - e^-4.5))."""
    x = _points(points, "Q", "mixture_metrics", min_n=1)
    if x.shape[1] != mixture.means.shape[1]:
        raise MetricError(f"Q: points have dimension {x.shape[1]}, the mixture {mixture.means.shape[1]}")
    idx, hq = _mode_assignments(x, mixture)
    modes, quality, rkl = _mode_stats(np.where(hq, idx, mixture.num_modes)[None], mixture.num_modes)
    spread = math.nan
    if hq.any():
        d2 = ((x[hq] - mixture.means[idx[hq]]) ** 2).sum(1)
        spread = math.sqrt(d2.mean() / (mixture.std**2 * (2 - 9 * math.exp(-4.5) / (1 - math.exp(-4.5)))))
    return {"modes": int(modes[0]), "high_quality": float(quality[0]), "reverse_kl": float(rkl[0]),
            "spread": spread}


def _mode_metric(name: str):
    col = {"modes_covered": 0, "high_quality": 1, "reverse_kl_modes": 2}[name]

    def run(p, q, *, rng, boot_rng, bootstrap, confidence):
        if not (hasattr(p, "means") and hasattr(p, "std") and callable(getattr(p, "nearest_mode", None))):
            raise MetricError(f"P: metric {name} needs a Gaussian mixture (training.data.Mixture, e.g. ring8 or "
                              f"grid25) as the reference; got {type(p).__name__}")
        x = _points(q, "Q", name, min_n=1)
        if x.shape[1] != p.means.shape[1]:
            raise MetricError(f"Q: points have dimension {x.shape[1]}, the mixture {p.means.shape[1]}")
        idx, hq = _mode_assignments(x, p)
        codes = np.where(hq, idx, p.num_modes)
        value = float(_mode_stats(codes[None], p.num_modes)[col][0])
        notes = []
        if len(x) != 2500:
            notes.append(f"the published protocol uses 2,500 samples; this used {len(x)}")
        if name == "reverse_kl_modes" and math.isinf(value):
            notes.append("+inf: no high-quality samples, the mode histogram is empty")
        if bootstrap > 0:
            reps = []
            block = max(1, (1 << 22) // len(x))
            for s in range(0, bootstrap, block):
                rows = boot_rng.integers(0, len(x), size=(min(block, bootstrap - s), len(x)))
                reps.append(_mode_stats(codes[rows], p.num_modes)[col])
            ci = _percentile_ci(np.concatenate(reps), value, confidence)
            notes.append(_boot_note(bootstrap, "generated points"))
        else:
            ci = (value, value)
        return _Result(value, ci, 0, len(x), "; ".join(notes),
                       f"VEEGAN/PacGAN mode protocol on {p.num_modes} modes, high quality = within 3 std")

    return run


# --- critic-based (variational lower bounds) ------------------------------------------------------

def _critic_metric(name: str):
    def run(p, q, *, rng, boot_rng, bootstrap, confidence, scores="logits"):
        real = _scores(p, "P", name)
        fake = _scores(q, "Q", name)
        notes = []
        if name == "js_critic":
            if scores == "probabilities":
                if real.min() < 0 or real.max() > 1 or fake.min() < 0 or fake.max() > 1:
                    raise MetricError("scores='probabilities' needs values in [0, 1]")
                eps = 1e-7
                real, fake = (special.logit(np.clip(s, eps, 1 - eps)) for s in (real, fake))
                notes.append("probabilities clipped to [1e-7, 1-1e-7]; pass logits for an exact value")
            elif scores != "logits":
                raise MetricError(f"scores must be 'logits' or 'probabilities', got {scores!r}")
            # V = E_P log D(x) + E_Q log(1 - D(x)), with log sigmoid(l) = -softplus(-l), log(1 - sigmoid(l)) = -softplus(l).
            t_real, t_fake = -np.logaddexp(0.0, -real), -np.logaddexp(0.0, fake)
            combine = lambda r, f: 0.5 * (r + f + math.log(4.0))  # noqa: E731
            notes.insert(0, "variational lower bound: JS >= (V + log 4)/2 for any discriminator, equal at the "
                            "optimal one; a weak discriminator gives a loose (even negative) bound")
        else:
            if scores != "logits":
                raise MetricError("w1_critic takes raw critic outputs; scores must be 'logits'")
            t_real, t_fake = real, fake
            combine = lambda r, f: r - f  # noqa: E731
            notes.insert(0, "variational lower bound: W1 >= E_P f - E_Q f for a 1-Lipschitz f; WGAN-GP only "
                            "penalises the gradient norm, so the bound holds approximately")
        value = float(combine(t_real.mean(), t_fake.mean()))
        if bootstrap > 0:
            reps = combine(_boot_mean(t_real, boot_rng, bootstrap), _boot_mean(t_fake, boot_rng, bootstrap))
            ci = _percentile_ci(reps, value, confidence)
            notes.append(_boot_note(bootstrap, "scores on both sides"))
        else:
            ci = (value, value)
        est = ("discriminator (V + log 4)/2 from logits" if name == "js_critic" else "critic E_P f - E_Q f")
        return _Result(value, ci, len(real), len(fake), "; ".join(notes), est)

    return run


# --- the registry ---------------------------------------------------------------------------------

_INTERVALS = {
    "histogram": "percentile bootstrap, multinomial resampling of the counts",
    "knn_kl": "Student-t from 10 disjoint random groups (variance / 10)",
    "w1_exact": "normal, delta method with the OT dual potentials",
    "sliced_w": "normal, delta method (each point's influence) plus the spread over directions",
    "w1_1d": "percentile bootstrap (multinomial weights on the sorted pooled sample)",
    "frechet": f"normal, standard error of <= {FRECHET_MAX_BOOTSTRAP} bootstrap refits",
    "kid": "normal, first-order U-statistic variance plus the subset spread",
    "prdc": "Student-t from 10 disjoint random groups (variance / 10)",
    "density": "percentile bootstrap of the Monte Carlo terms",
    "modes": "percentile bootstrap of the generated points",
    "critic": "percentile bootstrap of the scores, both sides",
}


def _m(name, input, unit, description, estimator, fn, options=(), max_n=None, lower_bound=False) -> Metric:
    kind = ("histogram" if input == "histogram" else "knn_kl" if name.startswith("knn_kl") else
            "prdc" if name in ("precision", "recall", "density", "coverage") else
            "modes" if name in ("modes_covered", "high_quality", "reverse_kl_modes") else
            input if input in ("density", "critic") else name)
    return Metric(name, input, unit, description, estimator, fn, tuple(options), max_n, lower_bound, _INTERVALS[kind])


_HIST_OPTS = ("p_exact", "q_exact", "labels")
_PLUGIN_BIAS = ("plug-in; when P = Q its mean is about (K-1)/2 (1/n_p + 1/n_q), not 0; +inf (bins named in the "
                "note) when one side has an empty bin the other uses")

METRICS: dict[str, Metric] = {m.name: m for m in [
    _m("kl_pq", "histogram", "nats", f"KL(P||Q) = sum_k p_k log(p_k/q_k) on histograms; {_PLUGIN_BIAS}",
       "plug-in on histograms", _histogram_metric("kl_pq"), _HIST_OPTS),
    _m("kl_qp", "histogram", "nats", f"KL(Q||P) = sum_k q_k log(q_k/p_k) on histograms; {_PLUGIN_BIAS}",
       "plug-in on histograms", _histogram_metric("kl_qp"), _HIST_OPTS),
    _m("js", "histogram", "nats", "JS = KL(P||M)/2 + KL(Q||M)/2, M = (P+Q)/2; in [0, log 2], always finite; "
       "plug-in, mean about (K-1)/8 (1/n_p + 1/n_q) when P = Q", "plug-in on histograms", _histogram_metric("js"), _HIST_OPTS),
    _m("js_bits", "histogram", "bits", "JS / log 2, in [0, 1]; plug-in as js", "plug-in on histograms",
       _histogram_metric("js_bits"), _HIST_OPTS),
    _m("tv", "histogram", "fraction", "TV = sum_k |p_k - q_k| / 2, in [0, 1]; plug-in, biased upward by "
       "O(sqrt(K/n)) when P = Q", "plug-in on histograms", _histogram_metric("tv"), _HIST_OPTS),
    _m("knn_kl_pq", "samples", "nats", "Wang, Kulkarni & Verdu (2009): d/n sum_i log(nu_k(i)/rho_k(i)) + "
       "log(m/(n-1)), k=1; consistent; biased low when Q is sparse where P has mass (N(0,1) vs N(3,1), true 4.5, mean (sd) over 10 seeds: 4.18 at n=1,000 (0.28), 4.34 at n=10,000 (0.16); larger k is worse), d is "
       "the ambient dimension so it is unreliable on data near a low-dimensional manifold",
       "k-NN (Wang, Kulkarni & Verdu 2009)", _knn_kl_metric("pq"), ("k",), QUADRATIC_MAX_N),
    _m("knn_kl_qp", "samples", "nats", "the same estimator with P and Q swapped: KL(Q||P)",
       "k-NN (Wang, Kulkarni & Verdu 2009)", _knn_kl_metric("qp"), ("k",), QUADRATIC_MAX_N),
    _m("w1_exact", "samples", "input units", f"exact W1 = min over couplings of E|x - y| (POT ot.emd2, "
       f"Euclidean cost) on seeded subsamples of at most {W1_MAX_POINTS} points; biased upward at finite n "
       "(the empirical W1 between two samples of one distribution is > 0)", "exact OT (POT ot.emd2)",
       _w1_exact, ("max_points",)),
    _m("sliced_w", "samples", "input units", "sliced W1: mean over 100 seeded random unit directions of the "
       "1-D W1 of the projections (POT ot.sliced_wasserstein_distance, p=1); <= W1; biased upward at finite n",
       "sliced Wasserstein (POT)", _sliced_w, ("projections",), SORT_MAX_N),
    _m("w1_1d", "samples", "input units", "1-D W1 = integral |F_P - F_Q| (scipy.stats.wasserstein_distance), "
       "exact for the samples; D = 1 only", "scipy.stats.wasserstein_distance", _w1_1d, (), SORT_MAX_N),
    _m("frechet", "features", "feature units^2", "Frechet distance on (evaluator) features: |mu_P - mu_Q|^2 + "
       "tr(S_P + S_Q - 2 (S_P^1/2 S_Q S_P^1/2)^1/2) = W2^2 between fitted Gaussians (FID's formula, not on "
       "Inception features); biased upward at finite n", "Frechet distance between fitted Gaussians", _frechet),
    _m("kid", "features", "kernel units", "unbiased MMD^2 with k(x,y) = (x.y/d + 1)^3, mean over 50 subsets of "
       "1,000 (Binkowski et al. 2018, their code's defaults); unbiased, can be slightly negative", "unbiased MMD^2 (Binkowski et al. 2018)",
       _kid, ("subsets", "subset_size")),
    _m("precision", "features", "fraction", "fraction of Q points inside the k-NN ball (k=3) of some P point "
       "(Kynkaanniemi et al. 2019); below 1 even for P = Q (0.47 at k=5, d=1,000, n=10,000)",
       "k-NN manifolds (Kynkaanniemi et al. 2019)", _prdc_metric("precision", 3), ("k",), QUADRATIC_MAX_N),
    _m("recall", "features", "fraction", "fraction of P points inside the k-NN ball (k=3) of some Q point "
       "(Kynkaanniemi et al. 2019)", "k-NN manifolds (Kynkaanniemi et al. 2019)",
       _prdc_metric("recall", 3), ("k",), QUADRATIC_MAX_N),
    _m("density", "features", "ratio", "mean over Q points of (number of P k-NN balls containing it)/k, k=5 "
       "(Naeem et al. 2020); ~1 for P = Q, robust to P outliers", "k-NN manifolds (Naeem et al. 2020)",
       _prdc_metric("density", 5), ("k",), QUADRATIC_MAX_N),
    _m("coverage", "features", "fraction", "fraction of P points whose k-NN ball (k=5) holds a Q point "
       "(Naeem et al. 2020); 0.96-0.97 for P = Q (k=5, d=1,000, n=10,000)", "k-NN manifolds (Naeem et al. 2020)",
       _prdc_metric("coverage", 5), ("k",), QUADRATIC_MAX_N),
    _m("mc_kl_pq", "density", "nats", "E_P[log p - log q] by Monte Carlo with P's exact density; log q exact when Q "
       "is a density (unbiased), else the k-NN density of Q's samples (k=1; biased low where Q is sparse, like "
       "knn_kl_pq)",
       "Monte Carlo with the true log-density", _mc_metric("kl_pq"), ("n", "k")),
    _m("mc_kl_qp", "density", "nats", "E_Q[log q - log p] = -H(Q) - E_Q log p: log p exact; H(Q) by the "
       "Kozachenko-Leonenko k-NN entropy (k=3, small bias in low dimension) unless Q is a density (exact MC)", "Monte Carlo with the true log-density",
       _mc_metric("kl_qp"), ("n", "k")),
    _m("mc_js", "density", "nats", "exact MC of E_P log(2p/(p+q))/2 + E_Q log(2q/(p+q))/2 when Q is a density; "
       "else H(M) - H(P)/2 - H(Q)/2 with Kozachenko-Leonenko entropies for M and Q (k=3; within ~5% on "
       "2-D Gaussians at n=5,000); clipped to [0, log 2]", "Monte Carlo with the true log-density", _mc_metric("js"), ("n", "k")),
    _m("modes_covered", "density", "modes", "modes with >= 1 high-quality sample (within 3 std of the mean), "
       "VEEGAN/PacGAN protocol on 2,500 samples", "VEEGAN/PacGAN mode protocol", _mode_metric("modes_covered")),
    _m("high_quality", "density", "fraction", "fraction of samples within 3 std of the nearest mean; a perfect "
       "2-D sampler scores 1 - exp(-4.5) = 0.989", "VEEGAN/PacGAN mode protocol", _mode_metric("high_quality")),
    _m("reverse_kl_modes", "density", "nats", "KL(mode histogram of the high-quality samples || uniform); log K "
       "for a sampler collapsed on one mode, ~0.002 for a perfect ring8 sampler from noise at n=2,500",
       "VEEGAN/PacGAN mode protocol", _mode_metric("reverse_kl_modes")),
    _m("js_critic", "critic", "nats", "(V + log 4)/2 with V = E_P log D(x) + E_Q log(1 - D(x)) from the "
       "discriminator's logits (stable log-sigmoid); a variational lower bound on JS",
       "discriminator bound", _critic_metric("js_critic"), ("scores",), lower_bound=True),
    _m("w1_critic", "critic", "critic units", "E_P f(x) - E_Q f(x) with a WGAN-GP critic f; a lower bound on "
       "W1 to the extent f is 1-Lipschitz", "critic bound", _critic_metric("w1_critic"), ("scores",),
       lower_bound=True),
]}


def estimate(metric: str, p, q, *, seed: int = 0, bootstrap: int = 200, confidence: float = 0.95,
             **context) -> Estimate:
    """Estimate `metric` between P (reference) and Q (model); see `METRICS[metric].input` for what P and Q are.

    `seed` drives subsampling, random projections, sampling from known densities and the bootstrap (the
    point estimate does not depend on `bootstrap`). `context` holds metric options (`Metric.options`),
    e.g. k=5 or q_exact=True; an option the metric does not take is an error.
    """
    if metric not in METRICS:
        raise MetricError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    m = METRICS[metric]
    bootstrap = _int_option("bootstrap", bootstrap, 0, MAX_BOOTSTRAP)
    if not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise MetricError(f"confidence must be in (0, 1), got {confidence!r}")
    seed = _int_option("seed", seed, 0, 2**64 - 1)
    unknown = sorted(set(context) - set(m.options))
    if unknown:
        accepted = ", ".join(m.options) or "none"
        raise MetricError(f"metric {metric} does not take option(s) {', '.join(unknown)} (accepted: {accepted})")
    rng, boot_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))
    r = m.fn(p, q, rng=rng, boot_rng=boot_rng, bootstrap=int(bootstrap), confidence=float(confidence), **context)
    lo, hi = r.ci
    return Estimate(metric=metric, value=float(r.value), ci_low=float(lo), ci_high=float(hi),
                    confidence=float(confidence), n_p=int(r.n_p), n_q=int(r.n_q),
                    estimator=r.estimator or m.estimator, unit=m.unit, lower_bound=m.lower_bound, note=r.note)


# --- plain helpers --------------------------------------------------------------------------------

def class_histogram(labels, num_classes: int) -> np.ndarray:
    """Counts (num_classes,) int64 of integer labels in 0..num_classes-1."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise MetricError(f"labels must be a vector (N,), got shape {y.shape}")
    if num_classes < 1:
        raise MetricError(f"num_classes must be >= 1, got {num_classes}")
    if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes):
        raise MetricError(f"labels must be integers in 0..{num_classes - 1}")
    return np.bincount(y.astype(np.int64), minlength=num_classes).astype(np.int64)


def classes_covered(counts, min_count: int = 1) -> int:
    """Number of classes with at least `min_count` samples."""
    return int((np.asarray(counts) >= min_count).sum())


def conditional_accuracy(requested, predicted, num_classes: int) -> tuple[float, np.ndarray]:
    """(overall accuracy, per-class accuracy (num_classes,)) of predicted labels against requested ones;
    a class that was never requested gets NaN in the per-class vector."""
    r, p = np.asarray(requested), np.asarray(predicted)
    if r.shape != p.shape or r.ndim != 1 or len(r) == 0:
        raise MetricError(f"requested and predicted must be non-empty vectors of one length, got {r.shape}, {p.shape}")
    class_histogram(r, num_classes), class_histogram(p, num_classes)  # validates both
    hit = (r == p).astype(np.float64)
    n = np.bincount(r, minlength=num_classes)
    correct = np.bincount(r, weights=hit, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(n > 0, correct / np.maximum(n, 1), np.nan)
    return float(hit.mean()), per_class


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
