"""AsyncClient: the Client's twin over grpc.aio (same arguments, same results, same exceptions)."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Sequence

import grpc
import numpy as np

from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from sdk import _types as T
from sdk._client import _Settings
from sdk._errors import RETRYABLE, DeadlineExceededError, from_rpc_error


class AsyncClient:
    """`async with AsyncClient() as c: x = await c.sample(label=7)` - see Client for the arguments."""

    def __init__(self, target: str | None = None, *, timeout: float | None = None, retries: int | None = None,
                 tls: bool = False, root_certificates=None, client_cert=None, client_key=None,
                 token: str | None = None):
        self._s = _Settings(target, timeout=timeout, retries=retries, tls=tls, root_certificates=root_certificates,
                            client_cert=client_cert, client_key=client_key, token=token)
        self._channel = (grpc.aio.secure_channel(self._s.target, self._s.credentials, self._s.options) if self._s.tls
                         else grpc.aio.insecure_channel(self._s.target, self._s.options))
        self._stub = pb_grpc.GeneratorServiceStub(self._channel)
        self._owner = True

    @property
    def target(self) -> str:
        return self._s.target

    def with_options(self, *, timeout: float | None = None, retries: int | None = None) -> "AsyncClient":
        other = copy.copy(self)
        other._s = copy.copy(self._s)
        if timeout is not None:
            other._s.timeout = float(timeout)
        if retries is not None:
            other._s.retries = int(retries)
        other._owner = False
        return other

    async def close(self) -> None:
        if self._owner:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, method: str, request, timeout: float | None = None):
        s = self._s
        deadline = time.monotonic() + (s.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{method}: no time left for a retry")
            try:
                return await getattr(self._stub, method)(request, timeout=left, metadata=s.metadata)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                pause = s.backoff(attempt)
                if e.code() not in RETRYABLE or attempt >= s.retries or time.monotonic() + pause >= deadline:
                    raise err from e
                attempt += 1
                await asyncio.sleep(pause)

    async def sample(self, n: int = 1, label: int | None = None, labels: Sequence[int] | None = None,
                     soft_labels=None, seed: int | None = None, model: str | None = None, *, truncation: float = 0.0,
                     latents=None, encoding: str = "float32", timeout: float | None = None) -> np.ndarray:
        return (await self.sample_result(n, label, labels, soft_labels, seed, model, truncation=truncation,
                                         latents=latents, encoding=encoding, timeout=timeout)).images

    async def sample_result(self, n: int = 1, label=None, labels=None, soft_labels=None, seed=None, model=None, *,
                            truncation: float = 0.0, latents=None, encoding: str = "float32",
                            return_latents: bool = True, timeout: float | None = None) -> T.SampleResult:
        method, req = T.sample_request(n, label, labels, soft_labels, seed, model, truncation, latents, encoding,
                                       return_latents)
        return T.sample_result(await self._call(method, req, timeout))

    async def stream(self, n: int, label=None, labels=None, soft_labels=None, seed: int | None = None,
                     model: str | None = None, *, offset: int = 0, chunk_size: int = 0, truncation: float = 0.0,
                     encoding: str = "float32", return_latents: bool = False,
                     timeout: float | None = None) -> AsyncIterator[T.Chunk]:
        req = T.stream_request(n, label, labels, soft_labels, seed, model, offset, chunk_size, truncation, encoding,
                               return_latents)
        call = self._stub.SampleStream(req, timeout=self._s.timeout if timeout is None else timeout,
                                       metadata=self._s.metadata)
        try:
            async for reply in call:
                yield T.chunk(reply)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        finally:
            call.cancel()

    async def interpolate(self, *points, labels: Sequence | None = None, steps: int = 8, method: str = "slerp",
                          model: str | None = None, encoding: str = "float32",
                          timeout: float | None = None) -> T.Interpolation:
        if len(points) == 1 and isinstance(points[0], (list, tuple)):
            points = tuple(points[0])
        req = T.interpolate_request(points, labels, steps, method, model, encoding)
        return T.interpolation(await self._call("Interpolate", req, timeout))

    async def invert(self, images, labels=None, *, method: str | None = None, steps: int = 0,
                     learning_rate: float = 0.0, prior_weight: float = 0.0, model: str | None = None,
                     encoding: str = "float32", timeout: float | None = None) -> T.Inversion:
        req = T.invert_request(images, labels, method, steps, learning_rate, prior_weight, model, encoding)
        return T.inversion(await self._call("Invert", req, timeout))

    async def evaluate(self, p, q, metrics: Sequence[str] = (), *, n: int = 0, seed: int | None = None,
                       bootstrap: int = 0, confidence: float = 0.0, q_labels: Sequence[int] | None = None,
                       timeout: float | None = None) -> T.Evaluation:
        req = T.evaluate_request(p, q, metrics, n, seed, bootstrap, confidence, q_labels)
        return T.evaluation(await self._call("EvaluateDivergence", req, timeout))

    async def list_models(self, all_versions: bool = False, *, timeout: float | None = None) -> list[T.ModelInfo]:
        reply = await self._call("ListModels", pb.ListModelsRequest(all_versions=all_versions), timeout)
        return [T.model_info(m) for m in reply.models]

    async def get_model(self, model: str, *, timeout: float | None = None) -> T.ModelInfo:
        return T.model_info(await self._call("GetModel", pb.GetModelRequest(model=model), timeout))
