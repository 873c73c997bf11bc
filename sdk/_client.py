"""The synchronous Client. Every method builds its request with sdk._types, calls with retries inside one
deadline, and returns numpy arrays / dataclasses; failures are sdk._errors exceptions raised `from` the
grpc error."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal, overload

import grpc
import numpy as np
from numpy.typing import ArrayLike

from protos.ganserve.v1 import generator_pb2 as pb
from sdk import _constants as C
from sdk import _types as T
from sdk._base import _Base
from sdk._errors import from_rpc_error


class Client(_Base):
    """A ganserve client. `Client()` talks to $GANSERVE_TARGET or localhost:50051.

    Args:
        target: "host:port" (beats $GANSERVE_TARGET, which beats localhost:50051).
        timeout: seconds per call, retries included (default 60).
        retries: extra attempts on UNAVAILABLE / RESOURCE_EXHAUSTED, with jittered exponential backoff.
        tls / root_certificates / client_cert / client_key: TLS (certificates as PEM bytes or file paths).
        token: bearer token (default $GANSERVE_TOKEN).
    """

    def close(self) -> None:
        """Close the connection (a copy from `with_options` leaves its parent's open)."""
        if self._owner:
            self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------------------
    def _call(self, method: str, request, timeout: float | None = None):
        deadline, attempt = self._deadline(timeout), 0
        while True:
            try:
                return getattr(self._stub, method)(request, timeout=self._left(method, deadline),
                                                   metadata=self._s.metadata)
            except grpc.RpcError as e:
                pause, typed = self._retry_pause(e, attempt, deadline)
                if pause < 0:
                    raise typed from e
                attempt += 1
                time.sleep(pause)

    # -- API ----------------------------------------------------------------------------------------------
    @overload
    def sample(self, n: int = 1, label: int | None = None, labels: Sequence[int] | None = None,
               soft_labels: ArrayLike | None = None, seed: int | None = None, model: str | None = None, *,
               truncation: float = 0.0, latents: ArrayLike | None = None, encoding: T.ArrayEncoding = "float32",
               timeout: float | None = None) -> np.ndarray: ...

    @overload
    def sample(self, n: int = 1, label: int | None = None, labels: Sequence[int] | None = None,
               soft_labels: ArrayLike | None = None, seed: int | None = None, model: str | None = None, *,
               truncation: float = 0.0, latents: ArrayLike | None = None, encoding: Literal["png"],
               timeout: float | None = None) -> list[bytes]: ...

    def sample(self, n=1, label=None, labels=None, soft_labels=None, seed=None, model=None, *, truncation=0.0,
               latents=None, encoding="float32", timeout=None):
        """n samples: a numpy array (N, C, H, W) in the model's value range ((N, D) for point models), uint8 for
        encoding="uint8", a list of PNG bytes for encoding="png".

        n: 1 or more. Above the server's per-call limit (1,024 by default) the samples are streamed and gathered
        into one array (the same samples as one call: sample i of a seed is the same either way); for millions,
        use `stream()` or `python -m sdk.batch`, which keep memory bounded.
        label: one class for all; labels: one per sample; soft_labels: a probability vector (K,) or (N, K).
        Any of them selects SampleConditional (default model: the server's default conditional model).
        seed: 0 .. 2**64-1 (default: the server picks one; `sample_result` returns it).
        truncation: 0 (off) or a threshold: latent entries beyond it are redrawn.
        latents: explicit latents (N, latent_dim) instead of n and seed.
        Raises InvalidArgumentError (with `.field`) before sending anything for a bad argument.
        """
        return self.sample_result(n, label, labels, soft_labels, seed, model, truncation=truncation,
                                  latents=latents, encoding=encoding, timeout=timeout).images

    def sample_result(self, n: int = 1, label: int | None = None, labels: Sequence[int] | None = None,
                      soft_labels: ArrayLike | None = None, seed: int | None = None, model: str | None = None, *,
                      truncation: float = 0.0, latents: ArrayLike | None = None, encoding: T.Encoding = "float32",
                      return_latents: bool = True, timeout: float | None = None) -> T.SampleResult:
        """Like `sample`, with the latents, conditions (one-hot or soft, (N, K)), seed and resolved "name@version"."""
        method, req = T.sample_request(n, label, labels, soft_labels, seed, model, truncation, latents, encoding,
                                       return_latents)
        if req.n > C.MAX_SAMPLES:
            gather = T.Gather(req.n)
            for c in self.stream(req.n, label, labels, soft_labels, seed, model, truncation=truncation,
                                 encoding=encoding, return_latents=return_latents,
                                 timeout=timeout or max(self._s.timeout, req.n * C.STREAM_S_PER_SAMPLE)):
                gather.add(c)
            return gather.result()
        return T.sample_result(self._call(method, req, timeout))

    def stream(self, n: int, label: int | None = None, labels: Sequence[int] | None = None,
               soft_labels: ArrayLike | None = None, seed: int | None = None, model: str | None = None, *,
               offset: int = 0, chunk_size: int = 0, truncation: float = 0.0, encoding: T.Encoding = "float32",
               return_latents: bool = False, timeout: float | None = None) -> Iterator[T.Chunk]:
        """Chunks of a SampleStream: samples offset .. offset+n-1 of the seed's sequence, each `Chunk` holding
        `.start`, `.images`, `.latents`, `.conditions`. n up to the server's stream limit (10**7 by default);
        chunk_size 0 is the server's default (256), at most 4,096. `timeout` covers the whole stream. Not retried:
        resume with `offset` (python -m sdk.batch does)."""
        req = T.stream_request(n, label, labels, soft_labels, seed, model, offset, chunk_size, truncation, encoding,
                               return_latents)
        calls = self._stub.SampleStream(req, timeout=self._s.timeout if timeout is None else timeout,
                                        metadata=self._s.metadata)
        try:
            for reply in calls:
                yield T.chunk(reply)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        finally:
            calls.cancel()

    def interpolate(self, *points: int | ArrayLike, labels: Sequence[int | ArrayLike] | None = None, steps: int = 8,
                    method: Literal["slerp", "linear"] = "slerp", model: str | None = None,
                    encoding: T.Encoding = "float32", timeout: float | None = None) -> T.Interpolation:
        """A path through two or more points, each a seed (int), a latent (1-D array) or an image (C, H, W);
        labels: one per point (int or probability vector) for conditional models. Returns an `Interpolation`:
        `.images` (steps per segment, (P, C, H, W)), `.latents`, `.conditions`, `.t` (0 .. len(points)-1).
        The path has at most the server's per-call limit of points (1,024)."""
        if len(points) == 1 and isinstance(points[0], (list, tuple)):
            points = tuple(points[0])
        req = T.interpolate_request(points, labels, steps, method, model, encoding)
        return T.interpolation(self._call("Interpolate", req, timeout))

    def invert(self, images: ArrayLike, labels: int | Sequence[int] | None = None, *,
               method: Literal["encoder", "optimize", "hybrid"] | None = None, steps: int = 0,
               learning_rate: float = 0.0, prior_weight: float = 0.0, model: str | None = None,
               encoding: T.Encoding = "float32", timeout: float | None = None) -> T.Inversion:
        """Images (N, C, H, W) in the model's value range (or uint8) -> an `Inversion`: `.latents` (N, latent_dim),
        `.reconstructions` (N, C, H, W), `.mse` per image (pixels scaled to [0, 1]), `.method`, `.steps`.
        method: encoder (fast), optimize or hybrid (gradient steps; 0 = the server's default)."""
        req = T.invert_request(images, labels, method, steps, learning_rate, prior_weight, model, encoding)
        return T.inversion(self._call("Invert", req, timeout))

    def evaluate(self, p: Any, q: Any, metrics: Sequence[str] = (), *, n: int = 0, seed: int | None = None,
                 bootstrap: int | None = None, confidence: float = 0.0, q_labels: Sequence[int] | None = None,
                 options: dict[str, dict] | None = None, timeout: float | None = None) -> T.Evaluation:
        """Divergences between P and Q; each is a reference name, a model name, {"model":..., "labels":[...]},
        {"histogram": counts} or an array of samples. Returns an `Evaluation`: `.results` (each a `Divergence` with
        `.value`, `.ci_low`, `.ci_high`, `.unit`, `.estimator`), also by name: `ev["kl_pq"]`. bootstrap: None for
        the server's default, 0 for no interval; options: per metric, e.g. {"knn_kl_pq": {"k": 5}} (MetricOptions)."""
        req = T.evaluate_request(p, q, metrics, n, seed, bootstrap, confidence, q_labels, options)
        return T.evaluation(self._call("EvaluateDivergence", req, timeout))

    def list_models(self, all_versions: bool = False, *, index: bool = False,
                    timeout: float | None = None) -> list[T.ModelInfo]:
        """The served models (each model's default version; every callable version with all_versions=True; every
        version in the store whatever its state, with `.state` and `.state_reason`, with index=True)."""
        reply = self._call("ListModels", pb.ListModelsRequest(all_versions=all_versions, index=index), timeout)
        return [T.model_info(m) for m in reply.models]

    def get_model(self, model: str, *, timeout: float | None = None) -> T.ModelInfo:
        """One model ("name" or "name@version"): kind, shapes, classes, capabilities, metrics. NotFoundError
        names the served models and the closest match."""
        return T.model_info(self._call("GetModel", pb.GetModelRequest(model=model), timeout))
