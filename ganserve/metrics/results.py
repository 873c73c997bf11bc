"""What every estimator returns and raises: `Estimate`, `MetricError`, the `Metric` table row, and the limits
shared by several families."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

LOG2 = math.log(2.0)
INPUTS = ("histogram", "samples", "features", "density", "critic")
MAX_BOOTSTRAP = 10_000
W1_MAX_POINTS = 2_000        # exact OT (POT ot.emd2) runs on a seeded subsample of at most this many points
FRECHET_MAX_BOOTSTRAP = 25   # each resample refits two covariances and two eigendecompositions; the sd of 25 is
                             # noisy, so the intervals use Student-t with 24 df
QUADRATIC_MAX_N = 20_000     # k-NN metrics cost O(n^2 d): refuse larger inputs rather than run for minutes
FEATURE_MAX_N = 50_000       # precision/recall/density/coverage: chunked O(n^2 d), memory bounded
SORT_MAX_N = 200_000         # sliced/1-D W1 hold (n, projections) sorted arrays
DUPLICATE_LIMIT = 32         # k-NN KL: more exact copies of one point than this means atoms, not a density


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
    # With the option per_sample: each point's term (precision/density: per Q point, recall/coverage: per P point).
    per_sample: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        for name in ("value", "ci_low", "ci_high", "confidence"):
            if math.isnan(getattr(self, name)):
                raise ValueError(f"Estimate.{name} is NaN for metric {self.metric}: this is a bug in ganserve.metrics")

    def as_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: infinities become the strings "inf" / "-inf" (JSON has no infinity)."""
        out = asdict(self)
        out["per_sample"] = None if self.per_sample is None else self.per_sample.tolist()
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
    description: str    # formula and bias, shown in the docs
    estimator: str      # short label copied into Estimate.estimator
    fn: Callable[..., "Result"] = field(repr=False, compare=False)
    options: tuple[str, ...] = ()   # accepted keyword options (anything else is a MetricError)
    max_n: int | None = None        # refuse inputs larger than this (cost)
    lower_bound: bool = False
    interval: str = ""              # how the confidence interval is made


@dataclass
class Result:
    """What a metric function returns to `estimate`, which adds the name, unit and confidence."""

    value: float
    ci: tuple[float, float]
    n_p: int
    n_q: int
    note: str = ""
    estimator: str = ""
    per_sample: np.ndarray | None = None
