"""``AsyncSMRClient``: the asyncio variant of :class:`~smr.clients.client.SMRClient`.

For services that already run an event loop (web back-ends, async pipelines). Same options, same
results; requests in flight are bounded by a semaphore instead of a thread pool::

    async with AsyncSMRClient("127.0.0.1:8001") as client:
        cells = await client.classify(images)

What the two clients share (options, endpoints, retries, requests and their answers) is
:class:`~smr.clients.client.ClientCore`; this module holds only what awaits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from .client import ClientCore
from .images import stack_images
from .model_info import ModelInfo
from .results import BatchOutputs, CellResult

__all__ = ["AsyncSMRClient"]


class AsyncSMRClient(ClientCore):
    """An asyncio client of the ``smr`` ensemble; arguments as for :class:`~smr.clients.client.SMRClient`."""

    @staticmethod
    def _import_grpc() -> Any:
        import tritonclient.grpc.aio as aioclient

        return aioclient

    def _setup(self) -> None:
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # of the retries; replaced by tests

    async def _with_retries(
        self, call: Callable[[Any], Awaitable[Any]], what: str, *, inference: bool = False
    ) -> Any:
        """``await call(grpc_client)`` on the endpoints in turn, as :meth:`SMRClient._with_retries`."""
        request = self._request(what, inference=inference)
        while True:
            with request.attempt() as grpc:
                return await call(grpc)
            await self._sleep(request.delay)

    async def get_info(self) -> ModelInfo:
        """Classes, lineages, image size and batch limit, fetched from the server on first use."""
        if self._info is None:
            config = await self._with_retries(self._get_model_config, self._model_config_what)
            self._info = self._model_info(config)
        return self._info

    async def get_server_version(self) -> str:
        """The server's version from its metadata (Triton's), fetched once."""
        if self._server_version is None:
            metadata = await self._with_retries(self._get_server_metadata, "its metadata")
            self._server_version = self._version_of(metadata)
        return self._server_version

    async def get_batch_size(self) -> int:
        return self._batch_size_of(await self.get_info())

    async def infer(self, batch: np.ndarray) -> BatchOutputs:
        """One request: a checked (N, H, W, 3) uint8 batch with N <= the server's ``max_batch_size``."""
        info = await self.get_info()
        call, what = self._infer_call(info, batch)
        start = time.perf_counter()
        result = await self._with_retries(call, what, inference=True)
        return self._answer(result, len(batch), info, start)

    async def classify(self, images: Sequence[np.ndarray]) -> list[CellResult]:
        """Classify uint8 RGB arrays; results in input order (see :meth:`SMRClient.classify`)."""
        info = await self.get_info()
        size = await self.get_batch_size()
        gate = asyncio.Semaphore(self.max_in_flight)

        async def one(start: int) -> BatchOutputs:
            async with gate:
                chunk = stack_images(
                    images[start : start + size], info.image_size, resize=self.resize, offset=start
                )
                return await self.infer(chunk)

        tasks = [asyncio.ensure_future(one(s)) for s in range(0, len(images), size)]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return self._cells(info, list(parts))

    async def close(self) -> None:
        for endpoint in self._pool.endpoints:
            await endpoint.handle.close()

    async def __aenter__(self) -> AsyncSMRClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
