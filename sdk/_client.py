"""The synchronous Client. Every method builds its request with sdk._types, calls with retries inside one
deadline, and returns numpy arrays / dataclasses; failures are sdk._errors exceptions raised `from` the
grpc error."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import grpc
import numpy as np

from protos.ganserve.v1 import generator_pb2 as pb
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
    def sample(self, n: int = 1, label: int | None = None, labels: Sequence[int] | None = None,
               soft_labels=None, seed: int | None = None, model: str | None = None, *, truncation: float = 0.0,
               latents=None, encoding: str = "float32", timeout: float | None = None) -> np.ndarray:
        """n samples as a numpy array (N, C, H, W) in the model's value range ((N, D) for point models).

        label: one class for all; labels: one per sample; soft_labels: a probability vector (K,) or (N, K).
        Any of them selects SampleConditional (default model: the server's default conditional model).
        """
        return self.sample_result(n, label, labels, soft_labels, seed, model, truncation=truncation,
                                  latents=latents, encoding=encoding, timeout=timeout).images

    def sample_result(self, n: int = 1, label=None, labels=None, soft_labels=None, seed=None, model=None, *,
                      truncation: float = 0.0, latents=None, encoding: str = "float32", return_latents: bool = True,
                      timeout: float | None = None) -> T.SampleResult:
        """Like `sample`, with the latents, conditions, seed and resolved model."""
        method, req = T.sample_request(n, label, labels, soft_labels, seed, model, truncation, latents, encoding,
                                       return_latents)
        return T.sample_result(self._call(method, req, timeout))

    def stream(self, n: int, label=None, labels=None, soft_labels=None, seed: int | None = None,
               model: str | None = None, *, offset: int = 0, chunk_size: int = 0, truncation: float = 0.0,
               encoding: str = "float32", return_latents: bool = False,
               timeout: float | None = None) -> Iterator[T.Chunk]:
        """Chunks of a SampleStream: samples offset .. offset+n-1 of the seed's sequence (not retried: resume
        with `offset`)."""
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

    def interpolate(self, *points, labels: Sequence | None = None, steps: int = 8, method: str = "slerp",
                    model: str | None = None, encoding: str = "float32",
                    timeout: float | None = None) -> T.Interpolation:
        """A path through two or more points, each a seed (int), a latent (1-D array) or an image (C, H, W);
        labels: one per point (int or probability vector) for conditional models."""
        if len(points) == 1 and isinstance(points[0], (list, tuple)):
            points = tuple(points[0])
        req = T.interpolate_request(points, labels, steps, method, model, encoding)
        return T.interpolation(self._call("Interpolate", req, timeout))

    def invert(self, images, labels=None, *, method: str | None = None, steps: int = 0, learning_rate: float = 0.0,
               prior_weight: float = 0.0, model: str | None = None, encoding: str = "float32",
               timeout: float | None = None) -> T.Inversion:
        """Images (N, C, H, W) in the model's value range (or uint8) -> latents and reconstructions."""
        req = T.invert_request(images, labels, method, steps, learning_rate, prior_weight, model, encoding)
        return T.inversion(self._call("Invert", req, timeout))

    def evaluate(self, p, q, metrics: Sequence[str] = (), *, n: int = 0, seed: int | None = None,
                 bootstrap: int = 0, confidence: float = 0.0, q_labels: Sequence[int] | None = None,
                 timeout: float | None = None) -> T.Evaluation:
        """Divergences between P and Q; each is a reference name, a model name, {"model":..., "labels":[...]},
        {"histogram": counts} or an array of samples."""
        req = T.evaluate_request(p, q, metrics, n, seed, bootstrap, confidence, q_labels)
        return T.evaluation(self._call("EvaluateDivergence", req, timeout))

    def list_models(self, all_versions: bool = False, *, timeout: float | None = None) -> list[T.ModelInfo]:
        reply = self._call("ListModels", pb.ListModelsRequest(all_versions=all_versions), timeout)
        return [T.model_info(m) for m in reply.models]

    def get_model(self, model: str, *, timeout: float | None = None) -> T.ModelInfo:
        return T.model_info(self._call("GetModel", pb.GetModelRequest(model=model), timeout))

