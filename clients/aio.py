"""``AsyncSMRClient``: the asyncio variant of :class:`~smr.clients.client.SMRClient`.

For services that already run an event loop (web back-ends, async pipelines). Same options, same
results; requests in flight are bounded by a semaphore instead of a thread pool::

    async with AsyncSMRClient("127.0.0.1:8001") as client:
        cells = await client.classify(images)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from .client import (
    DEFAULT_URL,
    INPUT,
    MAX_MESSAGE_BYTES,
    ConnectionOptions,
    RequestSettings,
    apply_request_settings,
    check_urls,
    new_attempts,
    parse_outputs,
    requested_output_names,
    retry_delay_or_raise,
)
from .endpoints import EndpointPool
from .errors import ModelConfigError
from .images import stack_images
from .metrics import ClientMetrics
from .model_info import ModelInfo, model_info_from_config
from .results import DEFAULT_MARGIN, BatchOutputs, CellResult, cells_from_outputs
from .retry import DEFAULT_BACKOFF, DEFAULT_RETRIES, RETRY_BUDGET

__all__ = ["AsyncSMRClient"]


class AsyncSMRClient(RequestSettings):
    """An asyncio client of the ``smr`` ensemble; arguments as for :class:`~smr.clients.client.SMRClient`."""

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        model: str = "smr",
        timeout: float = 120.0,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        retry_budget: float = RETRY_BUDGET,
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        compression: str | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        batch_size: int | None = None,
        max_in_flight: int = 4,
        resize: bool = False,
        margin: float = DEFAULT_MARGIN,
        embeddings: bool = False,
        metrics: ClientMetrics | None = None,
    ) -> None:
        import tritonclient.grpc.aio as aioclient

        self.options = ConnectionOptions(
            url=",".join(check_urls(url)),
            model=model,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            retry_budget=retry_budget,
            ssl=ssl,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            compression=compression,
            max_message_bytes=max_message_bytes,
        )
        apply_request_settings(
            self,
            batch_size,
            max_in_flight,
            resize=resize,
            margin=margin,
            embeddings=embeddings,
            metrics=metrics,
        )
        self._aio = aioclient
        self._pool = EndpointPool(
            self.options.urls,
            lambda url: aioclient.InferenceServerClient(**self.options.client_kwargs(url)),
        )
        self._info: ModelInfo | None = None
        self._server_version: str | None = None
        self._outputs: list | None = None  # known once the server's config is (see infer)
        self._clock, self._sleep = time.monotonic, asyncio.sleep  # of the retries; replaced by tests

    async def _with_retries(
        self, call: Callable[[Any], Awaitable[Any]], what: str, *, inference: bool = False
    ) -> Any:
        """``await call(grpc_client)`` on the endpoints in turn, as :meth:`SMRClient._with_retries`."""
        from tritonclient.utils import InferenceServerException

        attempts = new_attempts(self, inference=inference)
        while True:
            endpoint = attempts.start()
            try:
                result = await call(endpoint.handle)
            except InferenceServerException as exc:
                await self._sleep(retry_delay_or_raise(self.options, attempts, exc, what, self.metrics))
                continue
            except BaseException:
                attempts.abandoned()
                raise
            attempts.succeeded()
            return result

    async def get_info(self) -> ModelInfo:
        """Classes, lineages, image size and batch limit, fetched from the server on first use."""
        if self._info is None:
            config = await self._with_retries(
                lambda grpc: grpc.get_model_config(
                    self.options.model, as_json=True, client_timeout=self.options.timeout
                ),
                f"the configuration of model {self.options.model!r}",
            )
            info = model_info_from_config(config)
            if info.name != self.options.model:
                raise ModelConfigError(f"asked for model {self.options.model!r}, got {info.name!r}")
            self._info = info
        return self._info

    async def get_server_version(self) -> str:
        """The server's version from its metadata (Triton's), fetched once."""
        if self._server_version is None:
            meta = await self._with_retries(
                lambda grpc: grpc.get_server_metadata(as_json=True, client_timeout=self.options.timeout),
                "its metadata",
            )
            self._server_version = str(meta.get("version", ""))
        return self._server_version

    async def get_batch_size(self) -> int:
        limit = (await self.get_info()).max_batch_size
        return limit if self.requested_batch_size is None else min(self.requested_batch_size, limit)

    async def infer(self, batch: np.ndarray) -> BatchOutputs:
        """One request: a checked (N, H, W, 3) uint8 batch with N <= the server's ``max_batch_size``."""
        info = await self.get_info()
        n = len(batch)
        if n > info.max_batch_size:
            raise ValueError(f"batch of {n} exceeds the server's max_batch_size {info.max_batch_size}")
        if self._outputs is None:
            names = requested_output_names(info, embeddings=self.embeddings)
            self._outputs = [self._aio.InferRequestedOutput(name) for name in names]
        outputs = self._outputs
        inp = self._aio.InferInput(INPUT, list(batch.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.uint8))
        start = time.perf_counter()
        result = await self._with_retries(
            lambda grpc: grpc.infer(
                self.options.model,
                [inp],
                outputs=outputs,
                client_timeout=self.options.timeout,
                compression_algorithm=self.options.grpc_compression,
            ),
            f"a batch of {n} images",
            inference=True,
        )
        if self.metrics is not None:
            self.metrics.request_latency.observe(time.perf_counter() - start)
            self.metrics.requests.inc()
            self.metrics.cells_scored.inc(n)
        return parse_outputs(result, n, info, embeddings=self.embeddings)

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
        if not parts:
            return []
        return cells_from_outputs(info, BatchOutputs.concatenate(list(parts)), margin=self.margin)

    async def close(self) -> None:
        for endpoint in self._pool.endpoints:
            await endpoint.handle.close()

    async def __aenter__(self) -> AsyncSMRClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
