"""`python -m sdk evaluate --plot`: pictures of an evaluation. Needs matplotlib (not a dependency of the thin SDK;
the command says so when it is missing)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from sdk._client import Client
from sdk._errors import GanserveError

plt = None  # matplotlib.pyplot, imported by plot()

def _ring8() -> tuple[np.ndarray, float]:
    angles = 2 * np.pi * np.arange(8) / 8  # not linspace(0, 2 pi, 8): that repeats a mode
    return np.stack([np.cos(angles), np.sin(angles)], 1), 0.01


def _grid25() -> tuple[np.ndarray, float]:
    ticks = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    return np.array([(a, b) for a in ticks for b in ticks]), 0.05


# The 2-D references as (means, std) of equal-weight isotropic Gaussians: the SDK imports only protos, so it keeps
# its own copy of these few numbers; tests/test_cli.py checks them against the datasets the server evaluates with.
MIXTURES = {"ring8": _ring8, "grid25": _grid25}


def log_density(x: np.ndarray, means: np.ndarray, std: float) -> np.ndarray:
    """log p(x) of the mixture for points (N, 2)."""
    d2 = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    log_comp = -d2 / (2 * std**2) - np.log(2 * np.pi * std**2)
    top = log_comp.max(1, keepdims=True)
    return (top + np.log(np.exp(log_comp - top).mean(1, keepdims=True)))[:, 0]


def num(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}"


_HISTOGRAMS = re.compile(r"histograms: P \[([^\]]*)\]; Q \[([^\]]*)\]")


def _histograms(ev) -> tuple[np.ndarray, np.ndarray] | None:
    """(P counts, Q counts) from a histogram metric's note (server/divergence.py writes them there)."""
    for d in ev.results:
        m = _HISTOGRAMS.search(d.note)
        if m:
            return tuple(np.array([float(v) for v in g.split(",")]) for g in m.groups())
    return None


def _short(description: str) -> str:
    """"model gan-ring8@1 (2000)" -> "gan-ring8@1"."""
    parts = description.split(" ")
    return parts[1] if len(parts) > 1 else description


def _summary(ev, metrics: tuple[str, ...]) -> str:
    shown = [f"{m:<14} {num(ev[m].value):>8} [{num(ev[m].ci_low)}, {num(ev[m].ci_high)}] {ev[m].unit}"
             + (" (lower bound)" if ev[m].lower_bound else "") for m in metrics if m in ev.by_metric]
    return "\n".join(shown)


def _plot_mixture(c: Client, evals: list, reference: str, out: Path) -> None:
    """Each Q's evaluated samples (the same seed and n as the evaluation) over the true density's contours."""
    means, std = MIXTURES[reference]()
    lo, hi = means.min() - 0.5, means.max() + 0.5
    step = min(std / 3, (hi - lo) / 300)  # resolve each mode's contours
    g = np.arange(lo, hi + step, step)
    xx, yy = np.meshgrid(g, g)
    logp = log_density(np.stack([xx.ravel(), yy.ravel()], 1), means, std).reshape(xx.shape)
    # contours at 1, 2, 3 std of a mode (log-density below the peak by k^2/2)
    levels = logp.max() - np.array([4.5, 2.0, 0.5])
    fig, axes = plt.subplots(1, len(evals), figsize=(4.6 * len(evals), 5.0), squeeze=False)
    for ax, ev in zip(axes[0], evals):
        n = max(d.n_q for d in ev.results)
        # the evaluated samples: the server's Q seed is seed + 1; streamed, as n may exceed Sample's limit
        x = np.concatenate([ch.images for ch in c.stream(n, seed=(ev.seed + 1) % 2**64, model=_short(ev.q))])
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.35, color="#d62728", linewidths=0, zorder=1)
        ax.contour(xx, yy, logp, levels=levels, colors=["#9ecae1", "#4292c6", "#08306b"], linewidths=0.8, zorder=2)
        # the density's extent, widened to show 99.8% of the samples (stray mass is part of the picture)
        a, b = min(lo, float(np.quantile(x, 0.001)) - 0.1), max(hi, float(np.quantile(x, 0.999)) + 0.1)
        ax.set_xlim(a, b), ax.set_ylim(a, b), ax.set_aspect("equal")
        ax.set_title(f"{_short(ev.q)}: {n} samples", fontsize=10)
        ax.text(0.0, -0.1, _summary(ev, ("modes_covered", "high_quality", "reverse_kl_modes", "mc_kl_qp", "mc_js",
                                          "w1_exact", "js_critic", "w1_critic")),
                transform=ax.transAxes, fontsize=7, family="monospace", va="top")
    fig.suptitle(f"samples (red) over the {reference} density\n(contours at 1, 2, 3 std of each mode)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=130, bbox_inches="tight")  # keep the metrics text below the axes


def _plot_histograms(evals: list, hists: list, out: Path, xlabel: str) -> None:
    """P's and each Q's class histograms side by side, with 95% binomial error bars; the metrics below."""
    fig, axes = plt.subplots(1, len(evals), figsize=(4.8 * len(evals), 4.6), squeeze=False, sharey=True)
    for ax, ev, (hp, hq) in zip(axes[0], evals, hists):
        k = np.arange(len(hp))
        for h, dx, color, label in ((hp, -0.2, "#969696", f"P: {_short(ev.p)}"), (hq, 0.2, "#d62728",
                                                                                   f"Q: {_short(ev.q)}")):
            f = h / h.sum()
            ax.bar(k + dx, f, width=0.4, color=color, label=f"{label} ({int(h.sum())})",
                   yerr=1.96 * np.sqrt(f * (1 - f) / h.sum()), error_kw=dict(lw=0.7, capsize=1.5))
        ax.axhline(1 / len(hp), color="black", lw=0.6, ls=":")
        ax.set_xticks(k), ax.set_xlabel(xlabel)
        ax.set_title(f"{_short(ev.q)}: {int((hq > 0).sum())}/{len(hq)} classes", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", ncol=2)
        ax.text(0.0, -0.2, _summary(ev, ("kl_pq", "kl_qp", "js", "tv", "frechet", "js_critic", "w1_critic")),
                transform=ax.transAxes, fontsize=7, family="monospace", va="top")
    top = max(h.max() / h.sum() for pair in hists for h in pair)
    axes[0][0].set_ylim(0, 1.35 * top)  # shared axis; room for the legend above the bars
    axes[0][0].set_ylabel("fraction of samples (95% CI)")
    fig.tight_layout()
    fig.savefig(out, dpi=130, bbox_inches="tight")  # keep the metrics text below the axes


def _plot_bars(evals: list, out: Path) -> None:
    """Fallback (no classes, no known density): each metric with its interval, one bar per Q."""
    metrics = [d.metric for d in evals[0].results if all(d.metric in ev.by_metric for ev in evals)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 * len(metrics) + 1, 3), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        vals = [ev[m] for ev in evals]
        ys = np.array([v.value if math.isfinite(v.value) else np.nan for v in vals])
        err = np.array([[y - v.ci_low, v.ci_high - y] for y, v in zip(ys, vals)]).T
        ax.bar(range(len(vals)), ys, yerr=np.nan_tonum(err, nan=0.0, posinf=0.0), capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(vals)), [_short(ev.q) for ev in evals], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{m} ({vals[0].unit})", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def plot(c: Client, a, evals: list, out: Path) -> str:
    """Class histograms side by side (images, labels), samples over the true density's contours (2-D mixture
    references), else the metrics with their intervals. Returns what was drawn."""
    global plt
    try:  # here, not at the top: pyplot took 1.7 s of the CLI's 3.2 s start (-X importtime); only --plot needs it
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # after use("Agg"): no window
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from None
    try:
        if a.p in MIXTURES and all(ev.q.startswith("model ") for ev in evals):
            _plot_mixture(c, evals, a.p, out)
            return "samples over the density's contours"
        hists = [_histograms(ev) for ev in evals]
        if any(h is None for h in hists):  # no histogram metric requested: ask for one (same n and seed)
            try:
                hists = [h or _histograms(c.evaluate(a.p, q, ["tv"], n=a.n, seed=ev.seed, bootstrap=1,
                                                     q_labels=a.labels))
                         for h, q, ev in zip(hists, a.compare or [a.q], evals)]
            except GanserveError:
                hists = [None]
        if all(h is not None for h in hists):
            xlabel = ("nearest mode" if a.p in MIXTURES else
                      "class (the evaluator's prediction)" if a.p.startswith("mnist-") else "class")
            _plot_histograms(evals, hists, out, xlabel)
            return "class histograms"
        _plot_bars(evals, out)
        return "metrics with their intervals"
    finally:
        plt.close("all")


