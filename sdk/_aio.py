"""AsyncClient: the Client's twin over grpc.aio (same arguments, same results, same exceptions)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, overload

import grpc
import numpy as np
from numpy.typing import ArrayLike

from protos.ganserve.v1 import generator_pb2 as pb
from sdk import _constants as C
from sdk import _types as T
from sdk._base import _Base
from sdk._errors import from_rpc_error


class AsyncClient(_Base):
    """`async with AsyncClient() as c: x = await c.sample(label=7)` - see Client for the arguments."""

    _grpc = grpc.aio

    async def close(self) -> None:
        """Close the connection (a copy from `with_options` leaves its parent's open)."""
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

    @overload
    async def sample(self, n: int = 1, label: int | None = None, labels: Sequence[int] | None = None,
                     soft_labels: ArrayLike | None = None, seed: int | None = None, model: str | None = None, *,
                     truncation: float = 0.0, latents: ArrayLike | None = None,
                     encoding: T.ArrayEncoding = "float32", timeout: float | None = None) -> np.ndarray: ...

    @overload
    async def sample(self, n: int = 1, label: int | None = None, labels: Sequence[int] | None = None,
                     soft_labels: ArrayLike | None = None, seed: int | None = None, model: str | None = None, *,
                     truncation: float = 0.0, latents: ArrayLike | None = None, encoding: Literal["png"],
                     timeout: float | None = None) -> list[bytes]: ...

    async def sample(self, n=1, label=None, labels=None, soft_labels=None, seed=None, model=None, *, truncation=0.0,
                     latents=None, encoding="float32", timeout=None):
        """See Client.sample (large n is streamed and gathered the same way)."""
        return (await self.sample_result(n, label, labels, soft_labels, seed, model, truncation=truncation,
                                         latents=latents, encoding=encoding, timeout=timeout)).images

    async def sample_result(self, n: int = 1, label: int | None = None, labels: Sequence[int] | None = None,
                            soft_labels: ArrayLike | None = None, seed: int | None = None, model: str | None = None,
                            *, truncation: float = 0.0, latents: ArrayLike | None = None,
                            encoding: T.Encoding = "float32", return_latents: bool = True,
                            timeout: float | None = None) -> T.SampleResult:
        """See Client.sample_result."""
        method, req = T.sample_request(n, label, labels, soft_labels, seed, model, truncation, latents, encoding,
                                       return_latents)
        if req.n > C.MAX_SAMPLES:
            gather = T.Gather(req.n)
            async for c in self.stream(req.n, label, labels, soft_labels, seed, model, truncation=truncation,
                                       encoding=encoding, return_latents=return_latents,
                                       timeout=timeout or max(self._s.timeout, req.n * C.STREAM_S_PER_SAMPLE)):
                gather.add(c)
            return gather.result()
        return T.sample_result(await self._call(method, req, timeout))

    async def stream(self, n: int, label: int | None = None, labels: Sequence[int] | None = None,
                     soft_labels: ArrayLike | None = None, seed: int | None = None, model: str | None = None, *,
                     offset: int = 0, chunk_size: int = 0, truncation: float = 0.0, encoding: T.Encoding = "float32",
                     return_latents: bool = False, timeout: float | None = None) -> AsyncIterator[T.Chunk]:
        """See Client.stream."""
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

    async def interpolate(self, *points: int | ArrayLike, labels: Sequence[int | ArrayLike] | None = None,
                          steps: int = 8, method: Literal["slerp", "linear"] = "slerp", model: str | None = None,
                          encoding: T.Encoding = "float32", timeout: float | None = None) -> T.Interpolation:
        """See Client.interpolate."""
        if len(points) == 1 and isinstance(points[0], (list, tuple)):
            points = tuple(points[0])
        req = T.interpolate_request(points, labels, steps, method, model, encoding)
        return T.interpolation(await self._call("Interpolate", req, timeout))

    async def invert(self, images: ArrayLike, labels: int | Sequence[int] | None = None, *,
                     method: Literal["encoder", "optimize", "hybrid"] | None = None, steps: int = 0,
                     learning_rate: float = 0.0, prior_weight: float = 0.0, model: str | None = None,
                     encoding: T.Encoding = "float32", timeout: float | None = None) -> T.Inversion:
        """See Client.invert."""
        req = T.invert_request(images, labels, method, steps, learning_rate, prior_weight, model, encoding)
        return T.inversion(await self._call("Invert", req, timeout))

    async def evaluate(self, p: Any, q: Any, metrics: Sequence[str] = (), *, n: int = 0, seed: int | None = None,
                       bootstrap: int | None = None, confidence: float = 0.0, q_labels: Sequence[int] | None = None,
                       options: dict[str, dict] | None = None, timeout: float | None = None) -> T.Evaluation:
        """See Client.evaluate."""
        req = T.evaluate_request(p, q, metrics, n, seed, bootstrap, confidence, q_labels, options)
        return T.evaluation(await self._call("EvaluateDivergence", req, timeout))

    async def list_models(self, all_versions: bool = False, *, index: bool = False,
                          timeout: float | None = None) -> list[T.ModelInfo]:
        """See Client.list_models."""
        reply = await self._call("ListModels", pb.ListModelsRequest(all_versions=all_versions, index=index), timeout)
        return [T.model_info(m) for m in reply.models]

    async def get_model(self, model: str, *, timeout: float | None = None) -> T.ModelInfo:
        """See Client.get_model."""
        return T.model_info(await self._call("GetModel", pb.GetModelRequest(model=model), timeout))
