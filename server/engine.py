"""The work behind each RPC, as plain functions over a loaded model: sample, stream, interpolate, invert, and
encode outputs. No gRPC here: arguments are validated values, results are numpy arrays; errors are
server.errors exceptions.

Generator runs go through the model's dynamic batcher (server/batcher.py); latents always come from
protos/latents.py, so a seed means the same samples in Sample, SampleStream, the SDK and training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace

import numpy as np

from ganserve import images
from ganserve.inversion.runtime import DEFAULTS, Stopped, pixel_mse01
from ganserve.store import manifest as mf
from protos import latents as latent_fn
from protos.ganserve.v1 import generator_pb2 as pb
from server.errors import BadModelOutput, Cancelled, DeadlineExceeded, FailedPrecondition, ResourceExhausted
from server.registry import LoadedModel, Registry


@dataclass(frozen=True)
class Call:
    """What the engine needs to know about the RPC it works for: its deadline and whether it is still wanted."""

    deadline: float | None = None            # time.monotonic() value, or None for no deadline
    is_active: Callable[[], bool] = lambda: True
    # the call is about to hold this many more bytes (server/budget.py charges them; raises ResourceExhausted
    # when the server's memory budget has no room)
    reserve: Callable[[int], None] = lambda nbytes: None

    def check(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded("deadline exceeded")
        if not self.is_active():
            raise Cancelled("request cancelled by the client")

    def stopped(self) -> bool:
        """True once the deadline passed or the client went away (a `should_stop` for long loops)."""
        return (self.deadline is not None and time.monotonic() > self.deadline) or not self.is_active()


# -- generator runs -------------------------------------------------------------------------------------

def make_runner(model: LoadedModel, session=None) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """session.run for the generator graph (or `session`, another session on it), returning its first
    output (x)."""
    session = session or model.sessions["generator"]
    out = model.graph("generator")["outputs"][0]["name"]
    return lambda feeds: session.run([out], feeds)[0]


def _generator_feeds(model: LoadedModel, z: np.ndarray, y: np.ndarray | None) -> dict[str, np.ndarray]:
    names = [s["name"] for s in model.graph("generator")["inputs"]]
    feeds = {names[0]: np.ascontiguousarray(z, np.float32)}
    if model.conditional:
        feeds[names[1]] = np.ascontiguousarray(y, np.float32)
    return feeds


REPLY_COPIES = 3  # a reply's samples are held as the float32 array, the reply tensor's bytes, the serialized message


def reply_bytes(model: LoadedModel, n: int) -> int:
    """What a reply of n samples of `model` holds: REPLY_COPIES x their float32 bytes."""
    return REPLY_COPIES * 4 * n * int(np.prod(model.output_shape))


def generate_batch(model: LoadedModel, z: np.ndarray, y: np.ndarray | None, call: Call) -> np.ndarray:
    """G(z[, y]) for rows that already are a batch (the native front end's), run at once beside the queue."""
    call.check()
    return model.batcher.run_batch(_generator_feeds(model, z, y))


def generate(model: LoadedModel, z: np.ndarray, y: np.ndarray | None, call: Call, *,
             wait_for_queue: bool = False) -> np.ndarray:
    """G(z[, y]) through the model's batcher: (n, *output_shape) float32. `wait_for_queue`: a stream chunk,
    queued as bulk work that waits for room instead of being refused."""
    feeds = _generator_feeds(model, z, y)
    call.check()
    if not wait_for_queue:  # (a stream reserves one chunk for all its chunks)
        call.reserve(reply_bytes(model, len(z)))
    while True:
        try:
            future = model.batcher.submit(feeds, deadline=call.deadline, is_active=call.is_active,
                                          bulk=wait_for_queue)
            break
        except ResourceExhausted:
            # A stream waits for room (its reader already applies backpressure); single requests do not.
            if not wait_for_queue:
                raise
            time.sleep(0.005)
            call.check()
    while True:
        left = 0.1 if call.deadline is None else min(0.1, call.deadline - time.monotonic())
        try:
            return future.result(timeout=max(left, 0.0))
        except FutureTimeout:
            call.check()


# -- encodings ------------------------------------------------------------------------------------------

def check_output(model: LoadedModel, x: np.ndarray, what: str = "samples") -> np.ndarray:
    """`x` when every value is finite and (for images) within the model's value range (ganserve.images);
    else BadModelOutput (INTERNAL, naming the model): a wrong answer is never encoded and sent as OK."""
    _refuse_if(model, images.output_problem(x, model.value_range if what == "samples" else None, what))
    return x


def _refuse_if(model: LoadedModel, problem: str | None) -> None:
    if problem:
        raise BadModelOutput(f"{model.ref} {problem}; not answered", model.ref)


def to_uint8(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    return images.to_uint8(x, model.value_range)


def clean_output(model: LoadedModel, x: np.ndarray) -> np.ndarray | None:
    """Many requests' rows checked and clamped at once (`encode(..., clean=True)` for each request's slice), or
    None when some row fails check_output: then each request's own rows decide its status."""
    problem, x = images.checked(x, model.value_range)
    return None if problem else x


def encode(model: LoadedModel, x: np.ndarray, encoding: int, *,
           clean: bool = False) -> tuple[np.ndarray | None, list[bytes]]:
    """(array for `samples`, PNGs) in the requested encoding (validated beforehand), after check_output's check
    (one pair of reductions for the check and the clamp). `clean`: rows of clean_output."""
    if not clean:
        problem, x = images.checked(x, model.value_range, clamped=encoding not in (pb.ENCODING_UINT8, pb.ENCODING_PNG))
        _refuse_if(model, problem)
    if encoding == pb.ENCODING_UINT8:
        return to_uint8(model, x), []
    if encoding == pb.ENCODING_PNG:
        return None, [images.png_bytes(img) for img in to_uint8(model, x)]
    return x, []


# -- sampling -------------------------------------------------------------------------------------------

@dataclass
class Samples:
    x: np.ndarray             # (n, *output_shape) float32
    z: np.ndarray             # (n, latent_dim)
    y: np.ndarray | None      # (n, num_classes) for conditional models


def stream(model: LoadedModel, *, seed: int, n: int, offset: int, chunk: int, truncation: float,
           y: np.ndarray | None, call: Call, on_chunk: Callable[[], None] = lambda: None) -> Iterator[tuple[int, Samples]]:
    """Chunks (start index, samples) of samples offset .. offset+n-1 of the seed's sequence, produced one at a
    time: the next chunk is computed only when gRPC asks for it, i.e. when the client's flow-control window
    has room, so a slow reader holds the server to about one chunk in flight."""
    call.reserve(reply_bytes(model, min(chunk, n)))  # about one chunk is held at a time (flow control)
    for lo in range(0, n, chunk):
        size = min(chunk, n - lo)
        z = latent_fn.latents(seed, size, model.latent_dim, offset=offset + lo, truncation=truncation)
        yc = None if y is None else (np.repeat(y, size, 0) if len(y) == 1 else y[lo:lo + size])
        x = generate(model, z, yc, call, wait_for_queue=True)
        on_chunk()
        yield offset + lo, Samples(x, z, yc)


# -- interpolation --------------------------------------------------------------------------------------

def interpolate(model: LoadedModel, points: np.ndarray, conditions: np.ndarray | None, steps: int, method: str,
                call: Call) -> tuple[Samples, np.ndarray]:
    """Path through k latents (and k class-probability vectors, moved linearly so every point stays a
    probability vector): (samples along the path, t from 0 to k-1)."""
    z, t = latent_fn.path(points, steps, method)
    y = None if conditions is None else latent_fn.path(conditions, steps, "linear")[0]
    return Samples(generate(model, z, y, call), z, y), t


# -- inversion ------------------------------------------------------------------------------------------

INVERT_SLICE = 16  # images optimised per slice (each image's problem is independent); one step of a slice is
                   # one ONNX Runtime call (~30 ms for a DCGAN on a free core), the grain of deadline checks


@dataclass
class Inversion:
    z: np.ndarray
    reconstruction: np.ndarray
    mse: np.ndarray
    method: str
    steps: int


def classify(evaluator: LoadedModel, images01: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Evaluator classifier over images in its input range ([0, 1]): (logits (N, K), features (N, F))."""
    mf.check_input_range(evaluator.manifest, images01)  # a caller that forgot to_unit() is a bug, not a result
    session = evaluator.sessions["classifier"]
    graph = evaluator.graph("classifier")
    x_name = graph["inputs"][0]["name"]
    outs = [o["name"] for o in graph["outputs"]]
    want = ["logits", "features"] if "features" in outs else ["logits"]
    logits, feats = [], []
    for lo in range(0, len(images01), batch):
        res = session.run(want, {x_name: np.ascontiguousarray(images01[lo:lo + batch], np.float32)})
        logits.append(res[0])
        feats.append(res[1] if len(res) > 1 else res[0])
    k = evaluator.num_classes or 10
    if not logits:
        return np.zeros((0, k), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(logits), np.concatenate(feats)


def to_unit(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    """Images from the model's value range to [0, 1] (the evaluator's input range)."""
    lo, hi = model.value_range
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def guess_labels(registry: Registry, model: LoadedModel, x: np.ndarray) -> np.ndarray:
    """Class-probability vectors (one-hot) of the evaluator's guesses, for conditional inversion without labels."""
    evaluator = registry.evaluator()
    if evaluator is None:
        raise FailedPrecondition(f"{model.ref} is conditional and no evaluator model is served to guess the labels; "
                                 "send labels", "labels")
    dims = tuple(evaluator.graph("classifier")["inputs"][0]["dims"])
    if dims != model.output_shape:
        raise FailedPrecondition(f"the evaluator {evaluator.ref} takes images of shape {list(dims)}, {model.ref} makes "
                                 f"{list(model.output_shape)}: it cannot guess the labels; send labels", "labels")
    logits, _ = classify(evaluator, to_unit(model, x))
    y = np.zeros((len(x), model.num_classes), np.float32)
    y[np.arange(len(x)), logits.argmax(1) % model.num_classes] = 1.0
    return y


def invert(model: LoadedModel, x: np.ndarray, y: np.ndarray | None, method: str, *, steps: int | None,
           lr: float | None, prior_weight: float | None, call: Call) -> Inversion:
    """Images (N, *shape) in the model's value range -> latents, with the shared torch-free runtime."""
    settings = replace(DEFAULTS, **{k: v for k, v in (("steps", steps), ("lr", lr), ("prior_weight", prior_weight))
                                    if v is not None})
    zs, steps = [], 0
    for lo in range(0, len(x), INVERT_SLICE):  # slices keep one step's ONNX Runtime call short (tens of ms)
        call.check()
        try:  # the deadline and cancellation are checked before every step
            part = model.inverter().invert(x[lo:lo + INVERT_SLICE], method,
                                           None if y is None else y[lo:lo + INVERT_SLICE], settings=settings,
                                           reconstruct=False, should_stop=call.stopped)
        except Stopped:
            call.check()
            raise Cancelled("request cancelled by the client") from None
        zs.append(part.z)
        steps = part.steps
    z = check_output(model, np.concatenate(zs), "latents")
    rec = generate(model, z, y, call)
    return Inversion(z, rec, pixel_mse01(rec, x, model.value_range).astype(np.float32), method, steps)
