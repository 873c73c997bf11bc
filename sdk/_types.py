"""Results as plain dataclasses of numpy arrays, and the request builders / reply parsers that the sync and
async clients share (so both send exactly the same messages)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from sdk._constants import REFERENCES

_ENCODINGS = {"float32": pb.ENCODING_FLOAT32, "uint8": pb.ENCODING_UINT8, "png": pb.ENCODING_PNG}
_INVERSION = {None: pb.INVERSION_METHOD_UNSPECIFIED, "encoder": pb.ENCODER, "optimize": pb.OPTIMIZE,
              "hybrid": pb.HYBRID}
_INTERP = {"slerp": pb.SLERP, "linear": pb.LINEAR}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    kind: str
    description: str
    data_kind: str                       # "image" or "points"
    latent_dim: int
    num_classes: int
    class_names: list[str]
    output_shape: tuple[int, ...]
    value_range: tuple[float, float] | None
    conditional: bool
    soft_labels: bool
    invertible: bool
    optimizable: bool
    has_critic: bool
    metrics: dict[str, float]
    available_versions: list[int]
    created: str
    max_batch_size: int

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class SampleResult:
    images: np.ndarray | list[bytes]     # (N, *output_shape) array, or PNG bytes for encoding="png"
    latents: np.ndarray | None
    conditions: np.ndarray | None        # (N, num_classes) for conditional models
    seed: int
    model: str                           # resolved "name@version"


@dataclass(frozen=True)
class Chunk:
    start: int                           # index of the first sample in the seed's sequence
    images: np.ndarray | list[bytes]
    latents: np.ndarray | None
    conditions: np.ndarray | None
    seed: int
    model: str


@dataclass(frozen=True)
class Interpolation:
    images: np.ndarray | list[bytes]     # (points, *output_shape)
    latents: np.ndarray
    conditions: np.ndarray | None
    t: np.ndarray                        # 0 .. len(endpoints)-1 along the path
    model: str


@dataclass(frozen=True)
class Inversion:
    latents: np.ndarray
    reconstructions: np.ndarray | list[bytes]
    mse: np.ndarray                      # per image, pixels scaled to [0, 1]
    method: str
    steps: int
    model: str


@dataclass(frozen=True)
class Divergence:
    metric: str
    value: float
    ci_low: float
    ci_high: float
    confidence: float
    n_p: int
    n_q: int
    estimator: str
    unit: str
    lower_bound: bool
    note: str


@dataclass(frozen=True)
class Evaluation:
    results: list[Divergence]
    p: str
    q: str
    seed: int
    by_metric: dict[str, Divergence] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "by_metric", {r.metric: r for r in self.results})

    def __getitem__(self, metric: str) -> Divergence:
        return self.by_metric[metric]


# -- building requests ------------------------------------------------------------------------------------

def _array(t: pb.Tensor) -> np.ndarray | None:
    return np.array(tensors.to_array(t)) if tensors.is_set(t) else None


def encoding(name: str) -> int:
    try:
        return _ENCODINGS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"encoding must be one of {sorted(_ENCODINGS)}, got {name!r}") from None


def _labels(label, labels, soft_labels) -> dict[str, Any]:
    given = [x is not None for x in (label, labels, soft_labels)]
    if sum(given) > 1:
        raise ValueError("give one of label, labels or soft_labels")
    if label is not None:
        return {"labels": [int(label)]}
    if labels is not None:
        return {"labels": [int(v) for v in np.asarray(labels).ravel()]}
    if soft_labels is not None:
        soft = np.asarray(soft_labels, np.float32)
        return {"soft_labels": tensors.from_array(soft[None] if soft.ndim == 1 else soft)}
    return {}


def sample_request(n, label, labels, soft_labels, seed, model, truncation, latents, encoding_name, return_latents):
    """('Sample' | 'SampleConditional', request)."""
    fields = dict(model=model or "", n=0 if latents is not None else int(n), truncation=float(truncation),
                  encoding=encoding(encoding_name), return_latents=bool(return_latents))
    if seed is not None:
        fields["seed"] = int(seed)
    if latents is not None:
        fields["latents"] = tensors.from_array(np.asarray(latents, np.float32))
    cond = _labels(label, labels, soft_labels)
    if cond:
        return "SampleConditional", pb.SampleConditionalRequest(**fields, **cond)
    return "Sample", pb.SampleRequest(**fields)


def stream_request(n, label, labels, soft_labels, seed, model, offset, chunk_size, truncation, encoding_name,
                   return_latents) -> pb.SampleStreamRequest:
    fields = dict(model=model or "", n=int(n), offset=int(offset), chunk_size=int(chunk_size),
                  truncation=float(truncation), encoding=encoding(encoding_name), return_latents=bool(return_latents),
                  **_labels(label, labels, soft_labels))
    if seed is not None:
        fields["seed"] = int(seed)
    return pb.SampleStreamRequest(**fields)


def _endpoint(point, label) -> pb.Endpoint:
    ep = pb.Endpoint()
    if isinstance(point, (int, np.integer)) and not isinstance(point, bool):
        ep.seed = int(point)
    else:
        arr = np.asarray(point, np.float32)
        if arr.ndim <= 2:  # [latent_dim] or [1, latent_dim]; images are [C, H, W] or [1, C, H, W]
            ep.latent.CopyFrom(tensors.from_array(arr))
        else:
            ep.image.CopyFrom(tensors.from_array(arr))
    if label is not None:
        lab = np.asarray(label)
        if lab.ndim == 0:
            ep.label = int(lab)
        else:
            ep.soft_label.CopyFrom(tensors.from_array(lab.astype(np.float32)))
    return ep


def interpolate_request(points: Sequence, labels, steps, method, model, encoding_name) -> pb.InterpolateRequest:
    """Each point is a seed (int), a latent (1-D array) or an image ((C, H, W) array)."""
    if labels is not None and len(labels) != len(points):
        raise ValueError(f"give one label per endpoint ({len(points)}), got {len(labels)}")
    try:
        method_value = _INTERP[method.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"method must be one of {sorted(_INTERP)}, got {method!r}") from None
    eps = [_endpoint(p, None if labels is None else labels[i]) for i, p in enumerate(points)]
    return pb.InterpolateRequest(model=model or "", endpoints=eps, steps=int(steps), method=method_value,
                                 encoding=encoding(encoding_name))


def invert_request(images, labels, method, steps, learning_rate, prior_weight, model, encoding_name):
    if method is not None and method.lower() not in _INVERSION:
        raise ValueError(f"method must be one of encoder, optimize, hybrid, got {method!r}")
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    lab = [] if labels is None else [int(v) for v in np.atleast_1d(labels)]
    return pb.InvertRequest(model=model or "", images=tensors.from_array(arr), labels=lab,
                            method=_INVERSION[method.lower() if method else None], steps=int(steps),
                            learning_rate=float(learning_rate), prior_weight=float(prior_weight),
                            encoding=encoding(encoding_name))


def data_source(spec, labels=None) -> pb.DataSource:
    """A reference name, a model name ("gan-mnist", "cgan-mnist@2"), {"model": ..., "labels": [...]},
    {"histogram": counts}, or an array of samples (points/features [N, D], images [N, C, H, W] in [0, 1],
    INT64 class labels [N])."""
    if isinstance(spec, str):
        if spec in REFERENCES:
            return pb.DataSource(reference=spec)
        return pb.DataSource(model=pb.ModelSource(model=spec, labels=[int(v) for v in (labels or [])]))
    if isinstance(spec, dict):
        if "histogram" in spec:
            return pb.DataSource(samples=tensors.from_array(np.asarray(spec["histogram"])), histogram=True)
        return pb.DataSource(model=pb.ModelSource(model=spec["model"], labels=[int(v) for v in spec.get("labels", [])],
                                                  truncation=float(spec.get("truncation", 0.0))))
    return pb.DataSource(samples=tensors.from_array(np.asarray(spec)))


def evaluate_request(p, q, metrics, n, seed, bootstrap, confidence, q_labels=None) -> pb.EvaluateDivergenceRequest:
    fields = dict(p=data_source(p), q=data_source(q, q_labels), metrics=list(metrics or []), n=int(n),
                  bootstrap=int(bootstrap), confidence=float(confidence))
    if seed is not None:
        fields["seed"] = int(seed)
    return pb.EvaluateDivergenceRequest(**fields)


# -- parsing replies --------------------------------------------------------------------------------------

def model_info(m: pb.ModelInfo) -> ModelInfo:
    caps = m.capabilities
    return ModelInfo(
        name=m.name, version=m.version, kind=m.kind, description=m.description,
        data_kind="image" if m.data_kind == pb.IMAGE else "points", latent_dim=m.latent_dim,
        num_classes=m.num_classes, class_names=list(m.class_names), output_shape=tuple(m.output_shape),
        value_range=(m.value_min, m.value_max) if m.value_min != m.value_max else None,
        conditional=caps.conditional, soft_labels=caps.soft_labels, invertible=caps.invertible,
        optimizable=caps.optimizable, has_critic=caps.has_critic, metrics=dict(m.metrics),
        available_versions=list(m.available_versions), created=m.created, max_batch_size=m.max_batch_size)


def _images(samples: pb.Tensor, png) -> np.ndarray | list[bytes]:
    return list(png) if len(png) else _array(samples)


def sample_result(r: pb.SampleResponse) -> SampleResult:
    return SampleResult(_images(r.samples, r.png), _array(r.latents), _array(r.conditions), r.seed, r.model)


def chunk(r: pb.SampleChunk) -> Chunk:
    return Chunk(r.start, _images(r.samples, r.png), _array(r.latents), _array(r.conditions), r.seed, r.model)


def interpolation(r: pb.InterpolateResponse) -> Interpolation:
    return Interpolation(_images(r.samples, r.png), _array(r.latents), _array(r.conditions),
                         np.array(r.t, np.float32), r.model)


def inversion(r: pb.InvertResponse) -> Inversion:
    return Inversion(_array(r.latents), _images(r.reconstructions, r.png), np.array(r.mse, np.float32),
                     pb.InversionMethod.Name(r.method), r.steps, r.model)


def evaluation(r: pb.EvaluateDivergenceResponse) -> Evaluation:
    return Evaluation([Divergence(x.metric, x.value, x.ci_low, x.ci_high, x.confidence, x.n_p, x.n_q, x.estimator,
                                  x.unit, x.lower_bound, x.note) for x in r.results],
                      r.p_description, r.q_description, r.seed)
