"""The Open Inference Protocol (KServe v2) mapping: each served generator version is a v2 model.

    inputs   seed         INT64 (or UINT64) [1]   required unless `latents` is given
             n            INT64 (or INT32)  [1]   default: the rows of labels/soft_labels/latents, else 1
             labels       INT64 (or INT32)  [n] or [1]   conditional models: one label for all, or one each
             soft_labels  FP32 [n, classes] or [1, classes]   instead of labels
             latents      FP32 [n, latent_dim]    instead of seed
             truncation   FP32 [1]                0 = off, as v1's truncation
    output   samples      FP32 [n, *shape] in the model's value range, or UINT8 0..255 with the request
                          parameter samples_datatype = "UINT8"

No wire format here: server/oip_grpc.py and server/oip_http.py decode their requests into `Input`s and call
`prepare` then `run`; the checks are server/validate.py's, the latents protos/latents.py's and the runs go
through the model's batcher (server/engine.py), so a seed gives the same bytes as v1's Sample and a v2 call
can share a batch with v1 calls. Errors are server.errors exceptions naming the input ("labels[0]: must be in
0..9, got 12"). The evaluator classifier and Interpolate/Invert/EvaluateDivergence stay v1-only
(docs/open_inference_protocol.md says why).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from protos import latents as latent_fn
from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from server import engine, validate
from server.config import Config
from server.engine import Call
from server.errors import InvalidArgument, NotFound, require
from server.model import LoadedModel
from server.registry import Registry

SERVER_NAME = "ganserve"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("binary_tensor_data",)  # HTTP/REST: tensors as raw bytes after the JSON header
PLATFORM = "ganserve"

# v2 datatype -> numpy dtype (little-endian), for decoding raw bytes and typed lists. BYTES is not taken.
NUMPY = {"BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
         "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
         "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
SAMPLES_DATATYPES = ("FP32", "UINT8")
_ACCEPTED = {"seed": ("INT64", "UINT64"), "n": ("INT64", "INT32"), "labels": ("INT64", "INT32"),
             "soft_labels": ("FP32",), "latents": ("FP32",), "truncation": ("FP32",)}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size


@dataclass
class Input:
    """One decoded input tensor: its declared datatype and the array (already in its declared shape)."""
    name: str
    datatype: str
    array: np.ndarray


@dataclass
class Job:
    """A checked inference request: the model and its inputs."""
    model: LoadedModel
    z: np.ndarray
    y: np.ndarray | None
    datatype: str


@dataclass
class Output:
    name: str
    datatype: str
    array: np.ndarray


# -- models and metadata ----------------------------------------------------------------------------------

def _ref(name: str, version: str) -> str:
    """The registry reference a v2 (name, version) pair means; INVALID_ARGUMENT for a malformed one."""
    if not name:
        raise InvalidArgument("name a model", "model_name")
    if "@" in name:  # v1's name@version; v2 has its own field for the version
        raise InvalidArgument(f"a v2 model name has no @version (give the version as model_version), got "
                              f"{name[:80]!r}", "model_name")
    if not version:
        return name
    if not (version.isascii() and version.isdigit() and len(version) <= 9 and int(version) >= 1):
        raise InvalidArgument(f"must be a positive integer, got {version[:20]!r}", "model_version")
    return f"{name}@{version}"


def _not_a_generator(ref: str, kind: str) -> NotFound:
    return NotFound(f"{ref} is not a generator (kind {kind}): only generators are v2 models", "model_name")


def lookup(registry: Registry, name: str, version: str = "") -> str:
    """The ref ("name@version") of the generator version a v2 request names (the registry's default version
    when `version` is empty), without loading it; NOT_FOUND when it cannot be called or is not a generator."""
    entry = registry.lookup(_ref(name, version), "model_name")
    if entry.manifest["kind"] == "evaluator" or "generator" not in entry.manifest["graphs"]:
        raise _not_a_generator(entry.ref, entry.manifest["kind"])
    return entry.ref


def resolve(registry: Registry, name: str, version: str = "") -> LoadedModel:
    """The generator version a v2 request names, loaded now if it is not resident."""
    model = registry.resolve(_ref(name, version), "model_name")
    if model.is_evaluator or "generator" not in model.sessions:
        raise _not_a_generator(model.ref, model.kind)
    return model


def input_specs(model: LoadedModel) -> list[TensorSpec]:
    specs = [TensorSpec("seed", "INT64", (1,)), TensorSpec("n", "INT64", (1,))]
    if model.conditional:
        specs += [TensorSpec("labels", "INT64", (-1,)), TensorSpec("soft_labels", "FP32", (-1, model.num_classes))]
    return specs + [TensorSpec("latents", "FP32", (-1, model.latent_dim)), TensorSpec("truncation", "FP32", (1,))]


def output_specs(model: LoadedModel) -> list[TensorSpec]:
    return [TensorSpec("samples", "FP32", (-1, *model.output_shape))]


def versions(registry: Registry, model: LoadedModel) -> list[str]:
    return [str(v) for v in registry.versions(model.name)]


# -- inference --------------------------------------------------------------------------------------------
# (On the per-request path the checks are `if not ...: raise`, not require(): a message is formatted only when
# it is sent, which saved a third of v2's per-request Python.)

def element_count(shape, field: str) -> int:
    """The product of a declared shape, refusing negative dimensions (Python ints: no overflow)."""
    count = 1
    for d in shape:
        if d < 0:
            raise InvalidArgument(f"dimensions must be non-negative, got {[int(x) for x in shape]}", f"{field}.shape")
        count *= int(d)
    return count


def _scalar(inp: Input) -> int | float:
    if inp.array.size != 1 or inp.array.ndim > 1:
        raise InvalidArgument(f"must be [1], got {list(inp.array.shape)}", f"{inp.name}.shape")
    return inp.array.reshape(-1)[0].item()


_CONDITIONAL_INPUTS = frozenset(_ACCEPTED)
_UNCONDITIONAL_INPUTS = _CONDITIONAL_INPUTS - {"labels", "soft_labels"}


def _by_name(model: LoadedModel, inputs: list[Input]) -> dict[str, Input]:
    names = _CONDITIONAL_INPUTS if model.conditional else _UNCONDITIONAL_INPUTS
    given: dict[str, Input] = {}
    for inp in inputs:
        if inp.name not in names:
            listed = ", ".join(s.name for s in input_specs(model))
            raise InvalidArgument(f"{model.ref} takes no input {inp.name!r}; its inputs: {listed}",
                                  f"inputs[{inp.name}]"[:80])
        if inp.name in given:
            raise InvalidArgument("given twice", f"inputs[{inp.name}]")
        accepted = _ACCEPTED[inp.name]
        if inp.datatype not in accepted:
            raise InvalidArgument(f"must be {' or '.join(accepted)}, got {inp.datatype}", f"{inp.name}.datatype")
        given[inp.name] = inp
    return given


def prepare(model: LoadedModel, inputs: list[Input], parameters: dict, requested: list[str], config: Config) -> Job:
    """Check a request's inputs, parameters and requested outputs; the model's inputs (z, y)."""
    given = _by_name(model, inputs)
    for name in requested:
        if name != "samples":
            raise InvalidArgument(f"{model.ref} has one output, samples", f"outputs[{name}]"[:80])
    datatype = parameters.get("samples_datatype", "FP32")
    if datatype not in SAMPLES_DATATYPES:
        raise InvalidArgument(f"must be FP32 or UINT8, got {str(datatype)[:20]!r}", "parameters.samples_datatype")
    if datatype == "UINT8":
        require(model.value_range is not None, "parameters.samples_datatype",
                f"UINT8 is for image models; {model.ref} outputs points, use FP32")
    trunc = validate.truncation(float(_scalar(given["truncation"])) if "truncation" in given else 0.0)
    labels, soft = given.get("labels"), given.get("soft_labels")
    if labels is not None and (labels.array.ndim != 1 or labels.array.size < 1):
        raise InvalidArgument(f"must be [n] or [1], got {list(labels.array.shape)}", "labels.shape")
    if "latents" in given:
        require("seed" not in given, "seed", "give seed or latents, not both")
        require(trunc == 0, "truncation", "applies to latents drawn from a seed, not to given latents")
        z = validate.latents(tensors.from_array(given["latents"].array), model, config.max_samples)
        n = len(z)
    else:
        require("seed" in given, "seed", "give a seed (INT64 [1]) or latents (FP32 [n, latent_dim])")
        seed = _scalar(given["seed"])
        if not 0 <= seed <= latent_fn.MAX_SEED:
            raise InvalidArgument(f"must be in 0..2**64-1, got {seed}", "seed")
        if "n" in given:
            n = int(_scalar(given["n"]))
        elif labels is not None:
            n = labels.array.size
        elif soft is not None and soft.array.ndim == 2:
            n = soft.array.shape[0]
        else:
            n = 1
        n = validate.count(n, config.max_samples)
        z = latent_fn.latents(int(seed), n, model.latent_dim, truncation=trunc)
    if "n" in given and "latents" in given:
        require(_scalar(given["n"]) == n, "n", f"must match the {n} rows of latents, got {_scalar(given['n'])}")
    hard = labels.array.tolist() if labels is not None else []
    soft_msg = tensors.from_array(soft.array) if soft is not None else pb.Tensor()
    y = validate.labels(model, hard, soft_msg, n)
    return Job(model, z, y, datatype)


def run(job: Job, call: Call) -> list[Output]:
    """The generator through its batcher, encoded as v1's Sample encodes it (bytes identical)."""
    x = engine.generate(job.model, job.z, job.y, call)
    encoding = pb.ENCODING_UINT8 if job.datatype == "UINT8" else pb.ENCODING_FLOAT32
    samples, _ = engine.encode(job.model, x, encoding)
    return [Output("samples", job.datatype, samples)]


def deadline(parameters: dict, field: str = "parameters.timeout") -> float | None:
    """Triton's request parameter `timeout` (microseconds) as a time.monotonic() deadline, or None."""
    if "timeout" not in parameters:
        return None
    value = parameters["timeout"]
    require(isinstance(value, int) and not isinstance(value, bool) and value > 0, field,
            f"must be a positive integer (microseconds), got {str(value)[:20]}")
    return time.monotonic() + value / 1e6
