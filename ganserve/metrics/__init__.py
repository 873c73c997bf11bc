"""Divergence and quality estimators: one implementation, used by training, the evaluator and the server.

No torch here (numpy, scipy and POT only). Entry point: `estimate(metric, p, q, seed=..., bootstrap=...,
confidence=...) -> Estimate`, P the reference ("real") side and Q the model ("fake") side, as in
EvaluateDivergence. `METRICS` maps each name to a `Metric` (what P and Q must be, unit, formula and bias, how
the interval is made); `metrics_table_markdown()` renders it for docs/divergence_evaluation.md.

One module per estimator family: histogram (plug-in KL/JS/TV), knn (k-NN KL), wasserstein (exact, sliced,
1-D W1), frechet (Gaussian closed forms, Frechet distance, KID), prdc (precision/recall/density/coverage),
density (Monte Carlo with a known density), mixtures (the mode protocol), critic (variational lower bounds);
intervals holds the shared confidence-interval recipes and registry the table. Values may be +inf with the
reason in `Estimate.note`, never NaN; `bootstrap=0` skips the interval (ci_low = ci_high = value).
"""

from ._inputs import Cancelled
from .frechet import Gaussian, frechet_distance, gaussian_kl, gaussian_w2_squared, kid
from .histogram import class_histogram, classes_covered, conditional_accuracy
from .mixtures import mixture_metrics
from .prdc import density_coverage, precision_recall
from .options import OPTIONS
from .registry import DATA_KINDS, METRICS, default_metrics, estimate, metrics_table_markdown, validate_options
from .results import (DUPLICATE_LIMIT, FRECHET_MAX_BOOTSTRAP, INPUTS, LOG2, MAX_BOOTSTRAP, QUADRATIC_MAX_N,
                      SORT_MAX_N, W1_MAX_POINTS, Estimate, Metric, MetricError)

__all__ = [
    "DATA_KINDS", "DUPLICATE_LIMIT", "FRECHET_MAX_BOOTSTRAP", "INPUTS", "LOG2", "MAX_BOOTSTRAP", "METRICS",
    "QUADRATIC_MAX_N", "SORT_MAX_N", "W1_MAX_POINTS", "Cancelled", "Estimate", "Gaussian", "Metric", "MetricError",
    "class_histogram", "classes_covered", "conditional_accuracy", "default_metrics", "density_coverage",
    "estimate", "frechet_distance", "gaussian_kl", "gaussian_w2_squared", "kid", "metrics_table_markdown",
    "mixture_metrics", "precision_recall", "OPTIONS", "validate_options",
]
