"""The VEEGAN/PacGAN mode protocol on 2-D Gaussian mixtures: modes covered, high-quality fraction and the
reverse KL of the mode histogram."""

from __future__ import annotations

import math

import numpy as np

from . import _inputs as I
from .histogram import kl_rows
from .intervals import boot_note, percentile_ci
from .results import MetricError, Result


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
        rkl = kl_rows(freq, np.full(num_modes, 1.0 / num_modes))
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
    x = I.points(points, "Q", "mixture_metrics", min_n=1)
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


def mode_metric(name: str):
    col = {"modes_covered": 0, "high_quality": 1, "reverse_kl_modes": 2}[name]

    def run(p, q, *, rng, boot_rng, bootstrap, confidence):
        if not (hasattr(p, "means") and hasattr(p, "std") and callable(getattr(p, "nearest_mode", None))):
            raise MetricError(f"P: metric {name} needs a Gaussian mixture (ganserve.data.Mixture, e.g. ring8 or "
                              f"grid25) as the reference; got {type(p).__name__}")
        x = I.points(q, "Q", name, min_n=1)
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
            ci = percentile_ci(np.concatenate(reps), value, confidence)
            notes.append(boot_note(bootstrap, "generated points"))
        else:
            ci = (value, value)
        return Result(value, ci, 0, len(x), "; ".join(notes),
                      f"VEEGAN/PacGAN mode protocol on {p.num_modes} modes, high quality = within 3 std")

    return run
