"""AsyncClient: the Client's twin over grpc.aio (same arguments, same results, same exceptions)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
import numpy as np

from protos.ganserve.v1 import generator_pb2 as pb
from sdk import _types as T
from sdk._base import _Base
from sdk._errors import from_rpc_error


class AsyncClient(_Base):
    """`async with AsyncClient() as c: x = await c.sample(label=7)` - see Client for the arguments."""

    _grpc = grpc.aio

    async def close(self) -> None:
        if self._owner:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, method: str, request, timeout: float | None = None):
        deadline, attempt = self._deadline(timeout), 0
        while True:
            try:
                return await getattr(self._stub, method)(request, timeout=self._left(method, deadline),
                                                         metadata=self._s.metadata)
            except grpc.RpcError as e:
                pause, typed = self._retry_pause(e, attempt, deadline)
                if pause < 0:
                    raise typed from e
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
