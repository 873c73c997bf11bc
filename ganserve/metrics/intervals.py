"""Confidence intervals shared by the estimator families: percentile bootstrap, normal (delta method or a
standard error), Student-t from disjoint groups, and clipping to a quantity's known range."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import stats

SPLIT_GROUPS = 10


def percentile_ci(replicates: np.ndarray, value: float, confidence: float) -> tuple[float, float]:
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


def normal_ci(value: float, se: float, confidence: float) -> tuple[float, float]:
    if not math.isfinite(value):
        return value, value
    z = stats.norm.ppf(0.5 + confidence / 2.0)
    return value - z * se, value + z * se


def boot_mean(terms: np.ndarray, rng: np.random.Generator, bootstrap: int) -> np.ndarray:
    """(bootstrap,) means of `terms` over resampled points, vectorised in blocks to bound memory."""
    n = len(terms)
    out = np.empty(bootstrap)
    block = max(1, (1 << 22) // max(n, 1))
    for start in range(0, bootstrap, block):
        stop = min(bootstrap, start + block)
        out[start:stop] = terms[rng.integers(0, n, size=(stop - start, n))].mean(1)
    return out


def resample_counts(rng: np.random.Generator, counts: np.ndarray, size: int) -> np.ndarray:
    """(size, K) resampled probability vectors: multinomial draws of sum(counts) with the observed frequencies
    (the bootstrap of the underlying labels, done on their histogram)."""
    n = int(round(counts.sum()))
    return rng.multinomial(n, counts / counts.sum(), size=size) / n


def clip(value: float, ci: tuple[float, float], lo: float, hi: float, notes: list[str]) -> tuple[float, tuple]:
    """Clip an estimate of a quantity known to lie in [lo, hi] (KL >= 0, JS <= log 2); the raw estimate goes
    in the note, since a value outside the range is the estimator's bias showing."""
    if lo <= value <= hi:
        return value, (max(ci[0], lo), min(ci[1], hi))
    notes.insert(0, f"raw estimate {value:.4g} is outside [{lo:.4g}, {hi:.4g}] (estimator bias/noise), clipped")
    clipped = min(max(value, lo), hi)
    return clipped, (min(max(ci[0], lo), hi), min(max(ci[1], lo), hi))


def boot_note(bootstrap: int, what: str = "points") -> str:
    return f"interval: percentile bootstrap, {bootstrap} resamples of the {what}, seeded"


def split_ci(estimator: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray, value: float,
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
