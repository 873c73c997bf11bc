"""EvaluateDivergence: turn P and Q (uploaded samples, named references, or models) into what each metric
needs, then call ganserve.metrics (the one implementation of every estimator; no estimator lives here).

What a side becomes, by metric input:
    histogram  class counts: images -> the evaluator's predicted classes; INT64 [N] uploads are class labels;
               `histogram` uploads are counts; points -> index of the nearest mode of the reference mixture
    features   images -> the evaluator's penultimate features; points and uploaded [N, F] tensors as they are
    samples    points as they are; images flattened, pixels in [0, 1]
    density    P: a reference mixture (ring8, grid25) with its exact log-density; Q: its points (or a mixture)
    critic     scores of the critic/discriminator shipped with a model side, on both sides' samples; the
               manifest's critic graph says what it estimates ("js": a GAN discriminator, for js_critic;
               "wasserstein": a WGAN critic, for w1_critic), and a metric that does not match it is refused
The default metric set follows the data kind (ganserve.metrics.DATA_KINDS) plus the critic-based estimate of
each model side that ships a critic. Histogram metrics end their note with the two histograms they were
computed on, "histograms: P [c0, c1, ...]; Q [c0, c1, ...]" (counts; `python -m sdk evaluate --plot` draws them).
Model and reference sides draw with the request's seed for P and seed + 1 for Q, so a model against itself
compares independent samples (`python -m sdk evaluate --plot` redraws Q's samples from seed + 1).
Images travel in [0, 1] (the evaluator's input range): uploaded FLOAT32 images must be in [0, 1] (or UINT8),
model samples are mapped from their value range.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ganserve import data, metrics
from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from server import engine, validate
from server.config import Config
from server.engine import Call
from server.errors import Cancelled, FailedPrecondition, InvalidArgument, require
from server.registry import LoadedModel, Registry

log = logging.getLogger("ganserve.divergence")
MIXTURE_REFERENCES = ("ring8", "grid25")
IMAGE_REFERENCES = ("mnist-test", "mnist-train", "mnist-valid")
DEFAULT_BOOTSTRAP = 100
# sliced_w on two uploaded [4900, 200] float32 samples (7.5 MiB) peaked at ~110 MB of working memory, ~14x their
# bytes (measured on this machine); the other sample metrics stay below that
POINTS_WORK_FACTOR = 14


@dataclass
class Side:
    description: str
    n: int
    x: np.ndarray | None = None            # points (N, D), images (N, C, H, W) in [0, 1], or features (N, F)
    is_image: bool = False
    classes: np.ndarray | None = None      # class labels (N,) given or predicted
    requested: np.ndarray | None = None    # labels a conditional model was asked for (N,)
    counts: np.ndarray | None = None       # histogram upload (K,)
    model: LoadedModel | None = None
    mixture: object | None = None          # ganserve.data.Mixture of a reference
    _cache: dict = field(default_factory=dict)


@dataclass
class Outcome:
    reply: pb.EvaluateDivergenceResponse
    model_label: str


def _side(src: pb.DataSource, name: str, n: int, seed: int, registry: Registry, cfg: Config, call: Call,
          sample) -> Side:
    which = src.WhichOneof("source")
    if which is None:
        raise InvalidArgument("give samples, a reference or a model", name)
    if which == "reference":
        ref = src.reference
        require(ref in MIXTURE_REFERENCES + IMAGE_REFERENCES, f"{name}.reference",
                f"unknown reference {ref[:40]!r}; known: {', '.join(IMAGE_REFERENCES + MIXTURE_REFERENCES)}")
        try:
            x, labels = data.reference(ref, n, seed)
        except data.DataUnavailable as e:
            raise FailedPrecondition(str(e).splitlines()[0], f"{name}.reference") from e
        if ref in MIXTURE_REFERENCES:
            return Side(f"reference {ref} ({len(x)})", len(x), x=np.asarray(x, np.float32),
                        classes=np.asarray(labels), mixture=data.MIXTURES[ref]())
        return Side(f"reference {ref} ({len(x)})", len(x), x=np.asarray(x, np.float32), is_image=True,
                    classes=np.asarray(labels))
    if which == "model":
        ms = src.model
        model, x, requested = sample(ms.model, ms.labels, ms.truncation, n, seed, call, f"{name}.model.model")
        if model.data_kind == "image":
            return Side(f"model {model.ref} ({n})", n, x=engine.to_unit(model, x), is_image=True,
                        requested=requested, model=model)
        return Side(f"model {model.ref} ({n})", n, x=x.reshape(n, -1), requested=requested, model=model)
    # uploaded samples
    f = f"{name}.samples"
    arr = validate.tensor(src.samples, f, max_elements=cfg.max_eval_n * 28 * 28)
    if src.histogram:
        require(arr.ndim == 1 and len(arr) >= 2, f"{f}.shape", f"a histogram is [K] with K >= 2, got {list(arr.shape)}")
        require(arr.dtype != np.uint8, f"{f}.dtype", "a histogram is FLOAT32 or INT64 counts")
        counts = arr.astype(np.float64)
        require(bool(np.isfinite(counts).all() and (counts >= 0).all() and counts.sum() > 0), f"{f}.data",
                "counts must be finite, non-negative and not all zero")
        return Side(f"uploaded histogram ({int(counts.sum())})", int(counts.sum()), counts=counts)
    require(arr.ndim >= 1 and len(arr) >= 2, f"{f}.shape", f"need at least 2 samples, got shape {list(arr.shape)}")
    require(min(arr.shape) >= 1, f"{f}.shape", f"every dimension must be at least 1, got {list(arr.shape)}")
    require(len(arr) <= cfg.max_eval_n, f"{f}.shape", f"at most {cfg.max_eval_n} samples (the server's limit), "
            f"got {len(arr)}")
    if arr.dtype == np.int64:
        require(arr.ndim == 1, f"{f}.shape", f"INT64 samples are class labels [N], got {list(arr.shape)}")
        require(bool((arr >= 0).all() and (arr < 1000).all()), f"{f}.data", "class labels must be in 0..999")
        return Side(f"uploaded labels ({len(arr)})", len(arr), classes=arr.astype(np.int64))
    if arr.dtype == np.uint8:
        require(arr.ndim == 4, f"{f}.shape", f"UINT8 samples are images [N, C, H, W], got {list(arr.shape)}")
        return Side(f"uploaded images ({len(arr)})", len(arr), x=arr.astype(np.float32) / 255.0, is_image=True)
    require(bool(np.isfinite(arr).all()), f"{f}.data", "must be finite (no NaN or Inf)")
    if arr.ndim == 4:
        require(bool((arr >= -1e-3).all() and (arr <= 1 + 1e-3).all()), f"{f}.data",
                f"uploaded FLOAT32 images must be in [0, 1], got [{float(arr.min()):g}, {float(arr.max()):g}]")
        return Side(f"uploaded images ({len(arr)})", len(arr), x=np.clip(arr, 0, 1), is_image=True)
    require(arr.ndim == 2, f"{f}.shape", f"FLOAT32 samples are [N, D] points/features or [N, C, H, W] images, got "
            f"{list(arr.shape)}")
    return Side(f"uploaded samples ({len(arr)}, dim {arr.shape[1]})", len(arr), x=np.array(arr))


def _classified(side: Side, registry: Registry) -> tuple[np.ndarray, np.ndarray]:
    if "clf" not in side._cache:
        evaluator = registry.evaluator()
        if evaluator is None:
            raise FailedPrecondition("image metrics need the evaluator classifier (a model of kind 'evaluator') "
                                     "in the store, and none is served", "metrics")
        dims = tuple(evaluator.graph("classifier")["inputs"][0]["dims"])
        if tuple(side.x.shape[1:]) != dims:
            raise InvalidArgument(f"the evaluator {evaluator.ref} takes images of shape {list(dims)}; "
                                  f"{side.description} has {list(side.x.shape[1:])}", "metrics")
        logits, feats = engine.classify(evaluator, side.x)
        side._cache["clf"] = (logits.argmax(1), feats)
    return side._cache["clf"]


def _critic_scores(side: Side, critic_model: LoadedModel, name: str) -> np.ndarray:
    """Raw critic/discriminator outputs (N,) on this side's samples, in the critic model's value range."""
    graph = critic_model.graph("critic")
    names = [s["name"] for s in graph["inputs"]]
    if side.x is None or (side.is_image != (critic_model.data_kind == "image")):
        raise InvalidArgument(f"the critic of {critic_model.ref} needs {critic_model.data_kind} samples; "
                              f"{side.description} has none", name)
    x = side.x
    if side.is_image:
        lo, hi = critic_model.value_range
        x = (lo + (hi - lo) * x).astype(np.float32)  # [0, 1] -> the model's range
    if tuple(x.shape[1:]) != critic_model.output_shape:
        raise InvalidArgument(f"the critic of {critic_model.ref} takes samples of shape "
                              f"{list(critic_model.output_shape)}, {side.description} has {list(x.shape[1:])}", name)
    feeds = {names[0]: np.ascontiguousarray(x, np.float32)}
    if len(names) > 1:  # a conditional critic also takes the class of each sample
        classes = side.requested if side.requested is not None else side.classes
        if classes is None:
            raise InvalidArgument(f"the conditional critic of {critic_model.ref} needs the class of each sample; "
                                  f"{side.description} has none", name)
        feeds[names[1]] = np.eye(critic_model.num_classes, dtype=np.float32)[np.asarray(classes) % critic_model.num_classes]
    out = graph["outputs"][0]["name"]
    session = critic_model.sessions["critic"]
    return np.concatenate([session.run([out], {k: v[lo:lo + 512] for k, v in feeds.items()})[0].reshape(-1)
                           for lo in range(0, len(x), 512)])


CRITIC_METRICS = {"js": "js_critic", "wasserstein": "w1_critic"}  # manifest critic "estimates" -> metric


def _critic_holder(metric_name: str, p: Side, q: Side) -> LoadedModel:
    """The model side whose critic scores both sides: Q's when it ships one (the model under test), else P's."""
    holders = [s.model for s in (q, p) if s.model is not None and "critic" in s.model.sessions]
    if not holders:
        raise FailedPrecondition(f"metric {metric_name} needs a model side that ships a critic/discriminator "
                                 "(capabilities.has_critic)", "metrics")
    model = holders[0]
    estimates = model.graph("critic").get("estimates")
    if estimates in CRITIC_METRICS and CRITIC_METRICS[estimates] != metric_name:
        what = "a GAN discriminator" if estimates == "js" else "a WGAN critic"
        raise InvalidArgument(f"metric {metric_name} does not apply to {model.ref}: it ships {what}, which bounds "
                              f"{estimates} (use {CRITIC_METRICS[estimates]})", "metrics")
    return model


def _input(metrics, metric, side: Side, other: Side, registry: Registry, num_classes: int, name: str):
    """What `metric` takes from this side (see the module docstring)."""
    kind = metric.input
    if kind == "histogram":
        if side.counts is not None:
            return side.counts
        if side.is_image:
            classes = _classified(side, registry)[0]
        elif side.classes is not None and side.x is None:
            classes = side.classes
        elif side.x is not None and (side.mixture or other.mixture) is not None and side.x.shape[1] == 2:
            classes = (side.mixture or other.mixture).nearest_mode(side.x)[0]
        else:
            raise InvalidArgument(f"metric {metric.name} needs class histograms; {side.description} has no classes "
                                  "(send images, INT64 labels, a histogram, or points against ring8/grid25)", name)
        return metrics.class_histogram(np.asarray(classes), num_classes)
    if kind == "density":
        if side.mixture is not None:
            return side.mixture
        if name == "p":
            raise InvalidArgument(f"metric {metric.name} needs P to be a distribution with a known density "
                                  "(reference ring8 or grid25)", "p")
    if kind == "critic":
        p, q = (side, other) if name == "p" else (other, side)
        return _critic_scores(side, _critic_holder(metric.name, p, q), name)
    if side.x is None:
        raise InvalidArgument(f"metric {metric.name} needs samples; {side.description} has none", name)
    if kind == "features":
        return _classified(side, registry)[1] if side.is_image else side.x
    return side.x.reshape(len(side.x), -1)  # samples (and density on the Q side): points, or flat pixels


def _counts_text(counts) -> str:
    c = np.asarray(counts, np.float64)
    return "[" + ", ".join(f"{v:.0f}" if v == round(v) else f"{v:g}" for v in c) + "]"


def _default_kind(p: Side, q: Side, registry: Registry) -> str:
    if p.is_image or q.is_image:
        return "images" if registry.evaluator() is not None else "pixels"
    if p.mixture is not None:
        return "mixture"
    if p.x is None or q.x is None:
        return "histogram"
    return "samples-1d" if p.x.reshape(len(p.x), -1).shape[1] == 1 else "samples"


def _estimate(metrics, name: str, pa, qa, field: str, call: Call, **options):
    """metrics.estimate, stopped (its loops check `cancelled` per chunk or resample) once the call's deadline
    passed or the client went away, and with any failure of the estimator on these inputs answered
    INVALID_ARGUMENT naming the metric (the inputs are the client's or its choice of sources: an estimator that
    cannot handle them - a dynamic range beyond float64, say - is a property of the request, never INTERNAL).
    Failures other than MetricError are logged with their traceback: the estimator should have refused them."""
    try:
        return metrics.estimate(name, pa, qa, cancelled=call.stopped, **options)
    except metrics.Cancelled:
        call.check()  # DeadlineExceeded or Cancelled, whichever stopped it
        raise Cancelled("request cancelled by the client") from None
    except metrics.MetricError as e:
        raise InvalidArgument(str(e), field) from e
    except Exception as e:  # noqa: BLE001 - a residual estimator failure: the client gets a reason, we the trace
        log.warning("estimator %s failed on the request's data; answering INVALID_ARGUMENT", name, exc_info=e)
        raise InvalidArgument(f"metric {name} cannot be estimated on these samples ({type(e).__name__}: "
                              f"{str(e)[:200]}); check their scale and spread", field) from e


def _options(request: pb.EvaluateDivergenceRequest, names: list[str]) -> dict[str, dict]:
    """request.options as {metric: {option: value}}, each checked by ganserve.metrics (one place for the rules);
    a mistake is INVALID_ARGUMENT naming options[metric]."""
    out = {}
    for metric_name, msg in request.options.items():
        field = f"options[{metric_name[:40]}]"
        require(metric_name in metrics.METRICS, field, f"unknown metric {metric_name[:40]!r}")
        given = {f.name: v for f, v in msg.ListFields()}
        try:
            out[metric_name] = metrics.validate_options(metric_name, given)
        except metrics.MetricError as e:
            raise InvalidArgument(str(e), field) from e
    return out


def evaluate(request: pb.EvaluateDivergenceRequest, registry: Registry, cfg: Config, call: Call, *, sample) -> Outcome:
    n = request.n or cfg.default_eval_n
    require(n <= cfg.max_eval_n, "n", f"must be at most {cfg.max_eval_n} (the server's limit), got {n}")
    require(request.bootstrap <= cfg.max_bootstrap, "bootstrap",
            f"must be at most {cfg.max_bootstrap} (the server's limit), got {request.bootstrap}")
    # Unset: the server default; 0: no interval (ci_low = ci_high = value).
    bootstrap = request.bootstrap if request.HasField("bootstrap") else min(DEFAULT_BOOTSTRAP, cfg.max_bootstrap)
    confidence = request.confidence or 0.95
    require(0 < confidence < 1, "confidence", f"must be in (0, 1), got {confidence}")
    seed = validate.seed(request.HasField("seed"), request.seed)
    require(len(request.metrics) <= len(metrics.METRICS), "metrics",
            f"at most {len(metrics.METRICS)} metrics (each at most once), got {len(request.metrics)}")
    names = list(request.metrics)
    for i, m in enumerate(names):
        require(m in metrics.METRICS, f"metrics[{i}]", f"unknown metric {m[:40]!r}; known: {', '.join(sorted(metrics.METRICS))}")
    require(len(set(names)) == len(names), "metrics", "each metric at most once")
    options = _options(request, names)
    p = _side(request.p, "p", n, seed, registry, cfg, call, sample)
    q = _side(request.q, "q", n, (seed + 1) % 2**64, registry, cfg, call, sample)
    # the estimators' working memory on point/feature samples (images become small features first), charged to
    # the memory budget before any estimator runs (server/budget.py)
    call.reserve(POINTS_WORK_FACTOR * sum(s.x.size * 4 for s in (p, q) if s.x is not None and not s.is_image))
    points = lambda s: not s.is_image and (s.mixture is not None or s.model is not None)  # generated/reference points
    if (p.is_image and points(q)) or (q.is_image and points(p)):
        raise InvalidArgument(f"P ({p.description}) and Q ({q.description}) live in different spaces (images against "
                              "2-D points); compare images with images, points with points", "q")
    if not names:
        names = metrics.default_metrics(_default_kind(p, q, registry))
        for s in (q, p):  # plus the critic-based estimate each model side's critic supports
            if s.model is not None and "critic" in s.model.sessions:
                extra = CRITIC_METRICS.get(s.model.graph("critic").get("estimates"))
                if extra and extra not in names:
                    names.append(extra)
    for metric_name in options:
        require(metric_name in names, f"options[{metric_name}]",
                f"metric {metric_name[:40]!r} is not among those computed ({', '.join(names)})")
    evaluator = registry.evaluator()
    num_classes = (evaluator.num_classes if evaluator and (p.is_image or q.is_image) else 0) or max(
        [len(s.counts) for s in (p, q) if s.counts is not None]
        + [int(np.max(c)) + 1 for s in (p, q) for c in (s.classes,) if c is not None and len(c)]
        + [len((p.mixture or q.mixture).means) if (p.mixture or q.mixture) else 0] + [2])
    results = []
    for i, name in enumerate(names):
        call.check()
        metric = metrics.METRICS[name]
        try:
            pa = _input(metrics, metric, p, q, registry, num_classes, "p")
            qa = _input(metrics, metric, q, p, registry, num_classes, "q")
        except metrics.MetricError as e:
            raise InvalidArgument(str(e), f"metrics[{i}]") from e
        est = _estimate(metrics, name, pa, qa, f"metrics[{i}]", call, seed=seed, bootstrap=bootstrap,
                        confidence=confidence, **options.get(name, {}))
        note = est.note or ""
        if metric.input == "histogram":
            note += ("; " if note else "") + f"histograms: P {_counts_text(pa)}; Q {_counts_text(qa)}"
        results.append(pb.DivergenceResult(
            metric=name, value=est.value, ci_low=est.ci_low, ci_high=est.ci_high, confidence=est.confidence,
            n_p=est.n_p, n_q=est.n_q, estimator=est.estimator, unit=est.unit, lower_bound=est.lower_bound,
            note=note, per_sample=None if est.per_sample is None else tensors.from_array(est.per_sample)))
    label = ",".join(s.model.ref for s in (p, q) if s.model is not None) or "-"
    reply = pb.EvaluateDivergenceResponse(results=results, p_description=p.description, q_description=q.description,
                                          seed=seed)
    return Outcome(reply, label)
