"""`python -m sdk`: sample, interpolate, invert, evaluate, models. Readable tables, images as PNG grids, and a
one-line message with a non-zero exit on any error (2 for bad usage, 1 for a failed call)."""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np

from sdk._client import Client
from sdk._errors import GanserveError
from sdk._images import save_grid


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def _num(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}"


def _save(images, out: Path, value_range, nrow=None) -> None:
    if out.suffix == ".npy":
        np.save(out, np.asarray(images))
    else:
        save_grid(images, out, nrow=nrow, value_range=value_range or (-1.0, 1.0), scale=2)


def _value_range(client: Client, model_ref: str):
    return client.get_model(model_ref).value_range


def cmd_sample(c: Client, a) -> str:
    r = c.sample_result(a.n, a.label, a.labels, None, a.seed, a.model, truncation=a.truncation)
    info = c.get_model(r.model)
    if info.data_kind == "image":
        _save(r.images, a.out, info.value_range, a.nrow)
    else:
        np.save(a.out.with_suffix(".npy"), r.images)
        a.out = a.out.with_suffix(".npy")
    what = f"label {a.label}" if a.label is not None else (f"labels {a.labels}" if a.labels else "unconditional")
    return f"wrote {a.out}: {len(r.images)} samples from {r.model} ({what}, seed {r.seed})"


def cmd_interpolate(c: Client, a) -> str:
    r = c.interpolate(*a.seeds, labels=a.labels, steps=a.steps, method=a.method, model=a.model)
    _save(r.images, a.out, _value_range(c, r.model), nrow=a.steps)
    return f"wrote {a.out}: {len(r.images)} points from {r.model} through seeds {a.seeds} ({a.method})"


def _load_images(paths: list[Path]) -> np.ndarray:
    from PIL import Image

    out = []
    for p in paths:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            out += list(arr if arr.ndim == 4 else arr[None])
        else:
            img = np.array(Image.open(p).convert("L"), dtype=np.uint8)
            out.append(img[None])
    return np.stack(out)


def cmd_invert(c: Client, a) -> str:
    images = _load_images(a.images)
    r = c.invert(images, a.label, method=a.method, steps=a.steps, model=a.model)
    rows = [[str(p), f"{m:.5f}"] for p, m in zip(a.images if len(a.images) == len(r.mse) else range(len(r.mse)), r.mse)]
    if a.out:
        _save(r.reconstructions, a.out, _value_range(c, r.model))
    text = _table(rows, ["image", "mse [0,1]"])
    return (f"{text}\n{r.model}: method {r.method}, {r.steps} steps"
            + (f"; reconstructions in {a.out}" if a.out else ""))


def _eval_rows(ev) -> list[list[str]]:
    return [[d.metric, _num(d.value), f"[{_num(d.ci_low)}, {_num(d.ci_high)}]", d.unit, f"{d.n_p}/{d.n_q}",
             ("lower bound; " if d.lower_bound else "") + d.estimator] for d in ev.results]


MIXTURES = ("ring8", "grid25")
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
    shown = [f"{m:<14} {_num(ev[m].value):>8} [{_num(ev[m].ci_low)}, {_num(ev[m].ci_high)}] {ev[m].unit}"
             + (" (lower bound)" if ev[m].lower_bound else "") for m in metrics if m in ev.by_metric]
    return "\n".join(shown)


def _plot_mixture(c: Client, evals: list, reference: str, out: Path, plt) -> None:
    """Each Q's evaluated samples (the same seed and n as the evaluation) over the true density's contours."""
    from ganserve import data  # torch-free; the mixture definitions (one implementation)

    mixture = data.MIXTURES[reference]()
    lo, hi = mixture.means.min() - 0.5, mixture.means.max() + 0.5
    step = min(mixture.std / 3, (hi - lo) / 300)  # resolve each mode's contours
    g = np.arange(lo, hi + step, step)
    xx, yy = np.meshgrid(g, g)
    logp = mixture.log_density(np.stack([xx.ravel(), yy.ravel()], 1)).reshape(xx.shape)
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


def _plot_histograms(evals: list, hists: list, out: Path, plt, xlabel: str) -> None:
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


def _plot_bars(evals: list, out: Path, plt) -> None:
    """Fallback (no classes, no known density): each metric with its interval, one bar per Q."""
    metrics = [d.metric for d in evals[0].results if all(d.metric in ev.by_metric for ev in evals)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 * len(metrics) + 1, 3), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        vals = [ev[m] for ev in evals]
        ys = np.array([v.value if math.isfinite(v.value) else np.nan for v in vals])
        err = np.array([[y - v.ci_low, v.ci_high - y] for y, v in zip(ys, vals)]).T
        ax.bar(range(len(vals)), ys, yerr=np.nan_to_num(err, nan=0.0, posinf=0.0), capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(vals)), [_short(ev.q) for ev in evals], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{m} ({vals[0].unit})", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def _plot(c: Client, a, evals: list, out: Path) -> str:
    """Class histograms side by side (images, labels), samples over the true density's contours (2-D mixture
    references), else the metrics with their intervals. Returns what was drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        if a.p in MIXTURES and all(ev.q.startswith("model ") for ev in evals):
            _plot_mixture(c, evals, a.p, out, plt)
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
            _plot_histograms(evals, hists, out, plt, xlabel)
            return "class histograms"
        _plot_bars(evals, out, plt)
        return "metrics with their intervals"
    finally:
        plt.close("all")


def _why(d) -> str:
    """The part of a result's note that explains an infinite value or a lower bound."""
    parts = d.note.split("; ")
    return next((x for x in parts if x.startswith(("+inf", "variational lower bound"))), parts[0])


def cmd_evaluate(c: Client, a) -> str:
    qs = a.compare or [a.q]
    if not qs or qs == [None]:
        raise SystemExit("error: give --model MODEL (or --compare A B)")
    evals = [c.evaluate(a.p, q, a.metrics or (), n=a.n, seed=a.seed, bootstrap=a.bootstrap, q_labels=a.labels)
             for q in qs]
    if len(evals) == 1:
        ev = evals[0]
        text = f"P = {ev.p}\nQ = {ev.q}\nseed {ev.seed}\n\n" + _table(
            _eval_rows(ev), ["metric", "value", f"{int(round(100 * ev.results[0].confidence)) if ev.results else 95}% CI",
                             "unit", "n P/Q", "estimator"])
    else:
        # the default metric set can differ per model (each model's own critic bound): rows are the union
        metrics = {d.metric: d.unit for ev in evals for d in ev.results}
        cell = lambda ev, m: (f"{_num(ev[m].value)} [{_num(ev[m].ci_low)}, {_num(ev[m].ci_high)}]"  # noqa: E731
                              if m in ev.by_metric else "-")
        header = ["metric", "unit"] + [ev.q for ev in evals]
        rows = [[m, unit] + [cell(ev, m) for ev in evals] for m, unit in metrics.items()]
        text = f"P = {evals[0].p}, seed {evals[0].seed}\n\n" + _table(rows, header)
    notes = dict.fromkeys(f"{d.metric}: {_why(d)}" for ev in evals for d in ev.results
                          if not math.isfinite(d.value) or d.lower_bound)
    if notes:
        text += "\n\n" + "\n".join(notes)
    if a.plot:
        what = _plot(c, a, evals, a.plot)
        text += f"\nplot: {a.plot} ({what})"
    return text


def cmd_models(c: Client, a) -> str:
    rows = []
    for m in c.list_models(all_versions=a.all):
        caps = [k for k in ("conditional", "soft_labels", "invertible", "optimizable", "has_critic") if getattr(m, k)]
        rows.append([m.name, str(m.version), m.kind, m.data_kind, "x".join(map(str, m.output_shape)), str(m.latent_dim),
                     str(m.num_classes), ",".join(caps) or "-", ",".join(map(str, m.available_versions))])
    if not rows:
        return "no models served"
    return _table(rows, ["name", "version", "kind", "data", "shape", "latent", "classes", "capabilities", "versions"])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sdk", description="ganserve command line")
    p.add_argument("--target", help="host:port (default: $GANSERVE_TARGET or localhost:50051)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per call")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="draw samples and save them as a PNG grid (or .npy)")
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--label", type=int, help="one class for all samples (conditional models)")
    s.add_argument("--labels", type=int, nargs="+", help="one class per sample")
    s.add_argument("--seed", type=int)
    s.add_argument("--model")
    s.add_argument("--truncation", type=float, default=0.0)
    s.add_argument("--nrow", type=int)
    s.add_argument("--out", type=Path, default=Path("samples.png"))

    s = sub.add_parser("interpolate", help="a path through seeds, saved as a PNG strip")
    s.add_argument("--seeds", type=int, nargs="+", required=True)
    s.add_argument("--labels", type=int, nargs="+", help="one class per seed (conditional models)")
    s.add_argument("--steps", type=int, default=8)
    s.add_argument("--method", choices=["slerp", "linear"], default="slerp")
    s.add_argument("--model")
    s.add_argument("--out", type=Path, default=Path("interpolation.png"))

    s = sub.add_parser("invert", help="images (PNG or .npy) -> latents; prints the reconstruction error")
    s.add_argument("images", type=Path, nargs="+")
    s.add_argument("--label", type=int)
    s.add_argument("--method", choices=["encoder", "optimize", "hybrid"])
    s.add_argument("--steps", type=int, default=0)
    s.add_argument("--model")
    s.add_argument("--out", type=Path, help="save the reconstructions as a PNG grid")

    s = sub.add_parser("evaluate", help="divergences between P and Q, as a table")
    s.add_argument("--reference", "--p", dest="p", default="mnist-test",
                   help="P: a reference (mnist-test, mnist-train, mnist-valid, ring8, grid25) or a model")
    s.add_argument("--model", "--q", dest="q", help="Q: the model under test (or a reference)")
    s.add_argument("--compare", nargs="+", metavar="MODEL", help="evaluate several Q against the same P")
    s.add_argument("--labels", type=int, nargs="+", help="labels for a conditional Q model")
    s.add_argument("--metrics", nargs="+")
    s.add_argument("--n", type=int, default=0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--bootstrap", type=int, default=0)
    s.add_argument("--plot", type=Path, help="PNG: class histograms side by side (images), samples over the true "
                   "density's contours (ring8, grid25), else the metrics with their intervals")

    s = sub.add_parser("models", help="list served models")
    s.add_argument("--all", action="store_true", help="every version, not only the newest")
    return p


COMMANDS = {"sample": cmd_sample, "interpolate": cmd_interpolate, "invert": cmd_invert, "evaluate": cmd_evaluate,
            "models": cmd_models}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with Client(args.target, timeout=args.timeout) as client:
            print(COMMANDS[args.command](client, args))
    except GanserveError as e:
        field = f" [{e.field}]" if e.field and e.field not in e.details else ""
        print(f"error: {e.code.name}: {e.details}{field}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
