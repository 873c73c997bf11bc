"""Results as plain dataclasses of numpy arrays, and the request builders / reply parsers that the sync and
async clients share (so both send exactly the same messages)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import numpy as np

from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from sdk._constants import REFERENCES
from sdk._errors import InternalError, InvalidArgumentError

Encoding = Literal["float32", "uint8", "png"]
ArrayEncoding = Literal["float32", "uint8"]

_ENCODINGS = {"float32": pb.ENCODING_FLOAT32, "uint8": pb.ENCODING_UINT8, "png": pb.ENCODING_PNG}
_INVERSION = {None: pb.INVERSION_METHOD_UNSPECIFIED, "encoder": pb.ENCODER, "optimize": pb.OPTIMIZE,
              "hybrid": pb.HYBRID}
_INTERP = {"slerp": pb.SLERP, "linear": pb.LINEAR}


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str                           # READY | UNAVAILABLE | CANDIDATE | RETIRED
    reason: str                          # why it is not READY ("" when it is)
    resident: bool
    is_default: bool


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
    state: str = "READY"                 # READY | UNAVAILABLE | CANDIDATE | RETIRED (the repository index)
    state_reason: str = ""               # why it is not READY: load failure, quality gate, version policy
    is_default: bool = False             # "name" alone resolves to this version
    resident: bool = False               # its sessions are in memory (versions load on first use)
    versions: list[VersionStatus] = field(default_factory=list)  # every version of the model in the store

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
    per_sample: np.ndarray | None = None  # with options {metric: {"per_sample": True}}


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


# -- checking arguments (before anything is sent: the same typed error the server would give, with the field) --

def invalid(field_name: str, message: str) -> InvalidArgumentError:
    return InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, f"{field_name}: {message}",
                                [(field_name, message)])


def integer(field_name: str, value, lo: int, hi: int = 2**64 - 1) -> int:
    """`value` as an int in [lo, hi]; a float (even 2.0), a bool or a string is refused, not rounded."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise invalid(field_name, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        bound = f"at least {lo}" if hi == 2**64 - 1 else f"in {lo}..{hi}"
        raise invalid(field_name, f"must be {bound}, got {value}")
    return int(value)


def real(field_name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise invalid(field_name, f"must be a finite number, got {value!r}")
    return float(value)


def _seed(fields: dict, seed) -> None:
    if seed is not None:
        fields["seed"] = integer("seed", seed, 0)


# -- building requests ------------------------------------------------------------------------------------

def _array(t: pb.Tensor) -> np.ndarray | None:
    return np.array(tensors.to_array(t)) if tensors.is_set(t) else None


def encoding(name: str) -> int:
    try:
        return _ENCODINGS[name.lower()]
    except (KeyError, AttributeError):
        raise invalid("encoding", f"must be one of {sorted(_ENCODINGS)}, got {name!r}") from None


def _labels(label, labels, soft_labels) -> dict[str, Any]:
    given = [x is not None for x in (label, labels, soft_labels)]
    if sum(given) > 1:
        raise invalid("labels", "give one of label, labels or soft_labels")
    if label is not None:
        return {"labels": [integer("label", label, 0, 2**31 - 1)]}
    if labels is not None:
        values = np.asarray(labels, dtype=object).ravel()  # as given: 2.5 stays a float and is refused
        return {"labels": [integer(f"labels[{i}]", v, 0, 2**31 - 1) for i, v in enumerate(values)]}
    if soft_labels is not None:
        soft = np.asarray(soft_labels, np.float32)
        return {"soft_labels": tensors.from_array(soft[None] if soft.ndim == 1 else soft)}
    return {}


def sample_request(n, label, labels, soft_labels, seed, model, truncation, latents, encoding_name, return_latents):
    """('Sample' | 'SampleConditional', request)."""
    fields = dict(model=model or "", n=0 if latents is not None else integer("n", n, 1),
                  truncation=real("truncation", truncation), encoding=encoding(encoding_name),
                  return_latents=bool(return_latents))
    _seed(fields, seed)
    if latents is not None:
        fields["latents"] = tensors.from_array(np.asarray(latents, np.float32))
    cond = _labels(label, labels, soft_labels)
    if cond:
        return "SampleConditional", pb.SampleConditionalRequest(**fields, **cond)
    return "Sample", pb.SampleRequest(**fields)


def stream_request(n, label, labels, soft_labels, seed, model, offset, chunk_size, truncation, encoding_name,
                   return_latents) -> pb.SampleStreamRequest:
    fields = dict(model=model or "", n=integer("n", n, 1), offset=integer("offset", offset, 0),
                  chunk_size=integer("chunk_size", chunk_size, 0, 2**32 - 1), truncation=real("truncation", truncation),
                  encoding=encoding(encoding_name), return_latents=bool(return_latents),
                  **_labels(label, labels, soft_labels))
    _seed(fields, seed)
    return pb.SampleStreamRequest(**fields)


def _endpoint(point, label) -> pb.Endpoint:
    ep = pb.Endpoint()
    if isinstance(point, (int, np.integer)) and not isinstance(point, bool):
        ep.seed = integer("seed", point, 0)
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
        raise invalid("labels", f"give one label per endpoint ({len(points)}), got {len(labels)}")
    try:
        method_value = _INTERP[method.lower()]
    except (KeyError, AttributeError):
        raise invalid("method", f"must be one of {sorted(_INTERP)}, got {method!r}") from None
    eps = [_endpoint(p, None if labels is None else labels[i]) for i, p in enumerate(points)]
    return pb.InterpolateRequest(model=model or "", endpoints=eps, steps=integer("steps", steps, 0, 2**32 - 1),
                                 method=method_value,
                                 encoding=encoding(encoding_name))


def invert_request(images, labels, method, steps, learning_rate, prior_weight, model, encoding_name):
    if method is not None and method.lower() not in _INVERSION:
        raise invalid("method", f"must be one of encoder, optimize, hybrid, got {method!r}")
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    lab = [] if labels is None else [integer(f"labels[{i}]", v, 0, 2**31 - 1)
                                     for i, v in enumerate(np.atleast_1d(labels))]
    return pb.InvertRequest(model=model or "", images=tensors.from_array(arr), labels=lab,
                            method=_INVERSION[method.lower() if method else None],
                            steps=integer("steps", steps, 0, 2**32 - 1),
                            learning_rate=real("learning_rate", learning_rate),
                            prior_weight=real("prior_weight", prior_weight),
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


def evaluate_request(p, q, metrics, n, seed, bootstrap, confidence, q_labels=None,
                     options=None) -> pb.EvaluateDivergenceRequest:
    """bootstrap None: the server default; 0: no interval. options: {metric: {option: value}} (MetricOptions)."""
    fields = dict(p=data_source(p), q=data_source(q, q_labels), metrics=list(metrics or []),
                  n=integer("n", n, 0, 2**32 - 1), confidence=real("confidence", confidence))
    if bootstrap is not None:
        fields["bootstrap"] = integer("bootstrap", bootstrap, 0, 2**32 - 1)
    if options:
        try:
            fields["options"] = {m: pb.MetricOptions(**dict(o)) for m, o in dict(options).items()}
        except (TypeError, ValueError) as e:
            raise invalid("options", f"must map metric names to MetricOptions fields: {e}") from e
    _seed(fields, seed)
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
        available_versions=list(m.available_versions), created=m.created, max_batch_size=m.max_batch_size,
        state=_state(m.state), state_reason=m.state_reason, is_default=m.is_default, resident=m.resident,
        versions=[VersionStatus(v.version, _state(v.state), v.reason, v.resident, v.is_default) for v in m.versions])


def _state(value: int) -> str:
    return pb.VersionState.Name(value).removeprefix("VERSION_STATE_") if value else "READY"


def _images(samples: pb.Tensor, png) -> np.ndarray | list[bytes]:
    return list(png) if len(png) else _array(samples)


def sample_result(r: pb.SampleResponse) -> SampleResult:
    return SampleResult(_images(r.samples, r.png), _array(r.latents), _array(r.conditions), r.seed, r.model)


def chunk(r: pb.SampleChunk) -> Chunk:
    return Chunk(r.start, _images(r.samples, r.png), _array(r.latents), _array(r.conditions), r.seed, r.model)


class Gather:
    """A stream's chunks into one SampleResult, each written in place: memory is the result plus one chunk."""

    def __init__(self, n: int):
        self.n, self.count = n, 0
        self.images: np.ndarray | list[bytes] | None = None
        self.latents = self.conditions = None
        self.seed, self.model = 0, ""

    @staticmethod
    def _put(dest: np.ndarray | None, part: np.ndarray | None, n: int, at: int) -> np.ndarray | None:
        if part is None:
            return dest
        if dest is None:
            dest = np.empty((n, *part.shape[1:]), part.dtype)
        dest[at:at + len(part)] = part
        return dest

    def add(self, c: Chunk) -> int:
        """Take one chunk; returns how many samples it held."""
        k = len(c.images)
        if isinstance(c.images, list):
            self.images = self.images if self.images is not None else []
            self.images.extend(c.images)
        else:
            self.images = self._put(self.images, c.images, self.n, c.start)
        self.latents = self._put(self.latents, c.latents, self.n, c.start)
        self.conditions = self._put(self.conditions, c.conditions, self.n, c.start)
        self.seed, self.model, self.count = c.seed, c.model, self.count + k
        return k

    def result(self) -> SampleResult:
        if self.count != self.n:
            raise InternalError(grpc.StatusCode.DATA_LOSS, f"the stream ended after {self.count} of {self.n} samples")
        return SampleResult(self.images, self.latents, self.conditions, self.seed, self.model)


def interpolation(r: pb.InterpolateResponse) -> Interpolation:
    return Interpolation(_images(r.samples, r.png), _array(r.latents), _array(r.conditions),
                         np.array(r.t, np.float32), r.model)


def inversion(r: pb.InvertResponse) -> Inversion:
    return Inversion(_array(r.latents), _images(r.reconstructions, r.png), np.array(r.mse, np.float32),
                     pb.InversionMethod.Name(r.method), r.steps, r.model)


def evaluation(r: pb.EvaluateDivergenceResponse) -> Evaluation:
    return Evaluation([Divergence(x.metric, x.value, x.ci_low, x.ci_high, x.confidence, x.n_p, x.n_q, x.estimator,
                                  x.unit, x.lower_bound, x.note,
                                  tensors.to_array(x.per_sample) if x.HasField("per_sample") else None)
                       for x in r.results],
                      r.p_description, r.q_description, r.seed)
