"""Per-metric options: one typed table, validated in one place (`validate`), so every metric and the server
give the same clear error for the same mistake. A metric lists the options it takes in `Metric.options`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .results import MetricError


@dataclass(frozen=True)
class Option:
    kind: str                  # "int", "float", "bool", "choice", "labels"
    lo: float = 0
    hi: float = 0
    choices: tuple[str, ...] = ()
    help: str = ""


OPTIONS: dict[str, Option] = {
    "k": Option("int", 1, 1000, help="neighbours (k-NN KL, precision/recall/density/coverage, Monte Carlo)"),
    "projections": Option("int", 2, 5000, help="random directions (sliced_w)"),
    "subsets": Option("int", 2, 10_000, help="KID subsets"),
    "subset_size": Option("int", 2, 100_000, help="points per KID subset"),
    "max_points": Option("int", 2, 10_000, help="exact-OT cap: seeded subsample size (w1_exact, w2_exact, sinkhorn)"),
    "reg": Option("float", 1e-4, 10.0, help="Sinkhorn regularisation, relative to the median cost"),
    "n": Option("int", 2, 1_000_000, help="Monte Carlo samples drawn from a known density"),
    "extrapolate": Option("bool", help="frechet: Frechet-infinity, extrapolated to n = inf in 1/n"),
    "per_sample": Option("bool", help="precision/recall/density/coverage: return the per-sample membership"),
    "p_exact": Option("bool", help="histogram P is a probability vector, not counts"),
    "q_exact": Option("bool", help="histogram Q is a probability vector, not counts"),
    "labels": Option("labels", help="bin names for notes"),
    "scores": Option("choice", choices=("logits", "probabilities"), help="what critic scores are"),
}


def check(name: str, value: Any, metric: str = "") -> Any:
    """One option's value, converted, or a MetricError naming the option, the metric and the accepted range."""
    opt = OPTIONS[name]
    where = f"option {name}" + (f" (metric {metric})" if metric else "")
    if opt.kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not opt.lo <= value <= opt.hi:
            raise MetricError(f"{where} must be an integer in {int(opt.lo)}..{int(opt.hi)}, got {value!r}")
        return int(value)
    if opt.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not opt.lo <= float(value) <= opt.hi:
            raise MetricError(f"{where} must be a number in [{opt.lo:g}, {opt.hi:g}], got {value!r}")
        return float(value)
    if opt.kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise MetricError(f"{where} must be true or false, got {value!r}")
        return bool(value)
    if opt.kind == "choice":
        if value not in opt.choices:
            raise MetricError(f"{where} must be one of {', '.join(opt.choices)}, got {value!r}")
        return value
    return value  # labels: checked against the histogram by the metric


def validate(metric: str, accepted: tuple[str, ...], given: dict[str, Any]) -> dict[str, Any]:
    """The options `given` for `metric`, each checked; an option the metric does not take is an error."""
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise MetricError(f"metric {metric} does not take option(s) {', '.join(unknown)} "
                          f"(accepted: {', '.join(accepted) or 'none'})")
    return {name: check(name, value, metric) for name, value in given.items()}
