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

def lookup(registry: Registry, name: str, version: str = "") -> str:
    """The ref ("name@version") of the generator version a v2 request names (the registry's default version
    when `version` is empty), without loading it; NOT_FOUND when it cannot be called or is not a generator."""
    require(bool(name), "model_name", "name a model")
    if version:
        require(version.isascii() and version.isdigit() and len(version) <= 9 and int(version) >= 1,
                "model_version", f"must be a positive integer, got {version[:20]!r}")
    entry = registry.lookup(f"{name}@{version}" if version else name, "model_name")
    kind = entry.manifest["kind"]
    if kind == "evaluator" or "generator" not in entry.manifest["graphs"]:
        raise NotFound(f"{entry.ref} is not a generator (kind {kind}): only generators are v2 models", "model_name")
    return entry.ref


def resolve(registry: Registry, name: str, version: str = "") -> LoadedModel:
    """The generator version a v2 request names, loaded now if it is not resident."""
    return registry.resolve(lookup(registry, name, version), "model_name")


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

def element_count(shape, field: str) -> int:
    """The product of a declared shape, refusing negative dimensions (Python ints: no overflow)."""
    dims = [int(d) for d in shape]
    require(all(d >= 0 for d in dims), f"{field}.shape", f"dimensions must be non-negative, got {dims}")
    count = 1
    for d in dims:
        count *= d
    return count


def _scalar(inp: Input) -> int | float:
    require(inp.array.size == 1 and inp.array.ndim <= 1, f"{inp.name}.shape",
            f"must be [1], got {list(inp.array.shape)}")
    return inp.array.reshape(-1)[0].item()


def _by_name(model: LoadedModel, inputs: list[Input]) -> dict[str, Input]:
    specs = {s.name: s for s in input_specs(model)}
    given: dict[str, Input] = {}
    for inp in inputs:
        if inp.name not in specs:
            raise InvalidArgument(f"{model.ref} takes no input {inp.name!r}; its inputs: {', '.join(specs)}",
                                  f"inputs[{inp.name}]"[:80])
        require(inp.name not in given, f"inputs[{inp.name}]", "given twice")
        accepted = _ACCEPTED[inp.name]
        require(inp.datatype in accepted, f"{inp.name}.datatype",
                f"must be {' or '.join(accepted)}, got {inp.datatype}")
        given[inp.name] = inp
    return given


def prepare(model: LoadedModel, inputs: list[Input], parameters: dict, requested: list[str], config: Config) -> Job:
    """Check a request's inputs, parameters and requested outputs; the model's inputs (z, y)."""
    given = _by_name(model, inputs)
    for name in requested:
        require(name == "samples", f"outputs[{name}]"[:80], f"{model.ref} has one output, samples")
    datatype = parameters.get("samples_datatype", "FP32")
    require(datatype in SAMPLES_DATATYPES, "parameters.samples_datatype",
            f"must be FP32 or UINT8, got {str(datatype)[:20]!r}")
    if datatype == "UINT8":
        require(model.value_range is not None, "parameters.samples_datatype",
                f"UINT8 is for image models; {model.ref} outputs points, use FP32")
    trunc = validate.truncation(float(_scalar(given["truncation"])) if "truncation" in given else 0.0)
    labels, soft = given.get("labels"), given.get("soft_labels")
    if labels is not None:
        require(labels.array.ndim == 1 and labels.array.size >= 1, "labels.shape",
                f"must be [n] or [1], got {list(labels.array.shape)}")
    if "latents" in given:
        require("seed" not in given, "seed", "give seed or latents, not both")
        require(trunc == 0, "truncation", "applies to latents drawn from a seed, not to given latents")
        z = validate.latents(tensors.from_array(given["latents"].array), model, config.max_samples)
        n = len(z)
    else:
        require("seed" in given, "seed", "give a seed (INT64 [1]) or latents (FP32 [n, latent_dim])")
        seed = _scalar(given["seed"])
        require(0 <= seed <= latent_fn.MAX_SEED, "seed", f"must be in 0..2**64-1, got {seed}")
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
