"""The synchronous Client. Every method builds its request with sdk._types, calls with retries inside one
deadline, and returns numpy arrays / dataclasses; failures are sdk._errors exceptions raised `from` the
grpc error."""

from __future__ import annotations

import copy
import os
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np

from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from sdk import _constants as C
from sdk import _types as T
from sdk._errors import RETRYABLE, DeadlineExceededError, from_rpc_error


def _read(value: bytes | str | os.PathLike | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class _Settings:
    """What both clients resolve the same way: target, credentials, metadata, timeout, retries."""

    def __init__(self, target, *, timeout, retries, tls, root_certificates, client_cert, client_key, token):
        self.target = target or os.environ.get(C.ENV_TARGET) or C.DEFAULT_TARGET
        self.timeout = C.DEFAULT_TIMEOUT_S if timeout is None else float(timeout)
        self.retries = C.DEFAULT_RETRIES if retries is None else int(retries)
        token = token if token is not None else os.environ.get(C.ENV_TOKEN)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.tls = bool(tls or root_certificates or client_cert)
        self.credentials = grpc.ssl_channel_credentials(_read(root_certificates), _read(client_key),
                                                        _read(client_cert)) if self.tls else None
        self.options = [("grpc.max_receive_message_length", C.MAX_MESSAGE_BYTES),
                        ("grpc.max_send_message_length", C.MAX_MESSAGE_BYTES)]

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2^attempt)]."""
        return random.uniform(0, min(C.BACKOFF_MAX_S, C.BACKOFF_INITIAL_S * 2 ** attempt))


class Client:
    """A ganserve client. `Client()` talks to $GANSERVE_TARGET or localhost:50051.

    Args:
        target: "host:port" (beats $GANSERVE_TARGET, which beats localhost:50051).
        timeout: seconds per call, retries included (default 60).
        retries: extra attempts on UNAVAILABLE / RESOURCE_EXHAUSTED, with jittered exponential backoff.
        tls / root_certificates / client_cert / client_key: TLS (certificates as PEM bytes or file paths).
        token: bearer token (default $GANSERVE_TOKEN).
    """

    def __init__(self, target: str | None = None, *, timeout: float | None = None, retries: int | None = None,
                 tls: bool = False, root_certificates=None, client_cert=None, client_key=None,
                 token: str | None = None):
        self._s = _Settings(target, timeout=timeout, retries=retries, tls=tls, root_certificates=root_certificates,
                            client_cert=client_cert, client_key=client_key, token=token)
        self._channel = (grpc.secure_channel(self._s.target, self._s.credentials, self._s.options) if self._s.tls
                         else grpc.insecure_channel(self._s.target, self._s.options))
        self._stub = pb_grpc.GeneratorServiceStub(self._channel)
        self._owner = True

    @property
    def target(self) -> str:
        return self._s.target

    def with_options(self, *, timeout: float | None = None, retries: int | None = None) -> "Client":
        """A copy sharing the connection, with other defaults: `client.with_options(timeout=5).sample(...)`."""
        other = copy.copy(self)
        other._s = copy.copy(self._s)
        if timeout is not None:
            other._s.timeout = float(timeout)
        if retries is not None:
            other._s.retries = int(retries)
        other._owner = False
        return other

    def close(self) -> None:
        if self._owner:
            self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------------------
    def _call(self, method: str, request, timeout: float | None = None):
        s = self._s
        deadline = time.monotonic() + (s.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{method}: no time left for a retry")
            try:
                return getattr(self._stub, method)(request, timeout=left, metadata=s.metadata)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                pause = s.backoff(attempt)
                if e.code() not in RETRYABLE or attempt >= s.retries or time.monotonic() + pause >= deadline:
                    raise err from e
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

