"""``SMRClient``: classify cell patches with the SMR ensemble on a Triton server over gRPC.

The client learns everything from the server (classes, lineages and their stage boundaries, image
size, the largest batch), splits any number of images into batches no larger than the server
allows, keeps several requests in flight (threads around blocking gRPC calls, which release the
GIL), retries with exponential back-off while the server is UNAVAILABLE, and returns typed
:class:`~smr.clients.results.CellResult` objects in input order.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .errors import ModelConfigError, ServerRequestError, ServerUnavailableError
from .images import stack_images
from .metrics import ClientMetrics
from .model_info import ModelInfo, model_info_from_config
from .results import DEFAULT_MARGIN, BatchOutputs, CellResult, cells_from_outputs

__all__ = [
    "SMRClient",
    "ConnectionOptions",
    "COMPRESSIONS",
    "DEFAULT_URL",
    "OUTPUTS",
    "check_url",
    "parse_outputs",
]

K = TypeVar("K")

DEFAULT_URL = "127.0.0.1:8001"
COMPRESSIONS = ("none", "gzip", "deflate")
#: gRPC's own ceiling (int32): a batch of 256 patches of 224 px is ~38 MB, past gRPC's 4 MB default.
MAX_MESSAGE_BYTES = 2**31 - 1
OUTPUTS = ("PROBABILITIES", "CLASS_ID", "MATURITY", "CURVE_DISTANCE")
EMBEDDING_OUTPUT = "EMBEDDING"
INPUT = "IMAGE"

UNAVAILABLE = "StatusCode.UNAVAILABLE"
DEADLINE = "StatusCode.DEADLINE_EXCEEDED"
#: Triton's default ports: HTTP/REST, which SMR clients do not speak, and gRPC, which they do.
TRITON_HTTP_PORT, TRITON_GRPC_PORT = 8000, 8001
# what gRPC says when the address answers, but not with HTTP/2 (e.g. Triton's HTTP/1.1 port)
_HTTP1_SIGNS = ("Failed parsing HTTP/2", "http1.x server", "Trying to connect an http1")


def check_url(url: str) -> str:
    """``url`` if it is a gRPC ``HOST:PORT``; ``ValueError`` with a hint for ``http://...`` and friends."""
    text = url.strip()
    if "://" in text:
        scheme, rest = text.split("://", 1)
        address = rest.split("/", 1)[0]
        tls = " and --ssl for TLS" if scheme.lower() in ("https", "grpcs") else ""
        raise ValueError(
            f"--url {url}: give HOST:PORT without a scheme ({scheme}://), e.g. --url {address}{tls}"
        )
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--url {url}: expected HOST:PORT, e.g. 127.0.0.1:{TRITON_GRPC_PORT}")
    return text


def _port_of(url: str) -> int | None:
    port = url.rpartition(":")[2]
    return int(port) if port.isdigit() else None


def http_port_hint(url: str, detail: str = "") -> str:
    """A hint when ``url`` looks like Triton's HTTP port rather than its gRPC port ("" otherwise)."""
    answered_http = any(sign.lower() in detail.lower() for sign in _HTTP1_SIGNS)
    if not answered_http and _port_of(url) != TRITON_HTTP_PORT:
        return ""
    host = url.rpartition(":")[0]
    what = (
        f"{url} answers, but not with gRPC: is it Triton's HTTP port? SMR"
        if answered_http
        else f"port {TRITON_HTTP_PORT} is Triton's HTTP port, but SMR"
    )
    return (
        f"; {what} clients speak gRPC, which Triton serves on port {TRITON_GRPC_PORT} by default "
        f"(--url {host}:{TRITON_GRPC_PORT})"
    )


@dataclass(frozen=True)
class ConnectionOptions:
    """How to reach the server; shared by :class:`SMRClient` and the asyncio client."""

    url: str = DEFAULT_URL
    model: str = "smr"
    timeout: float = 120.0  # seconds per request (a whole batch)
    retries: int = 4  # extra attempts while the server is UNAVAILABLE
    backoff: float = 0.5  # first back-off in seconds; doubles per retry, capped at max_backoff
    max_backoff: float = 8.0
    ssl: bool = False
    root_certificates: str | None = None  # PEM file; None: the system's roots
    private_key: str | None = None  # PEM file for client-certificate (mutual) TLS
    certificate_chain: str | None = None  # PEM file for client-certificate (mutual) TLS
    compression: str | None = None  # "gzip" | "deflate" | None
    max_message_bytes: int = MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        check_url(self.url)
        if self.compression not in (None, *COMPRESSIONS):
            raise ValueError(f"unknown compression {self.compression!r}; valid: {', '.join(COMPRESSIONS)}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if not 0 < self.max_message_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be in 1..{MAX_MESSAGE_BYTES}")
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("client-certificate TLS needs both private_key and certificate_chain")
        if not self.ssl and (self.root_certificates or self.private_key):
            raise ValueError("TLS files given but ssl is off; pass ssl=True (--ssl)")

    @property
    def grpc_compression(self) -> str | None:
        return None if self.compression in (None, "none") else self.compression

    def channel_args(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", 2**31 - 1),
            ("grpc.keepalive_timeout_ms", 20000),
        ]

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``tritonclient.grpc[.aio].InferenceServerClient``."""
        return {
            "url": self.url,
            "ssl": self.ssl,
            "root_certificates": self.root_certificates,
            "private_key": self.private_key,
            "certificate_chain": self.certificate_chain,
            "channel_args": self.channel_args(),
        }

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based): exponential with +-25 % jitter."""
        base = min(self.max_backoff, self.backoff * 2**attempt)
        return base * random.uniform(0.75, 1.25)


def status_of(exc: BaseException) -> str:
    """The gRPC status string of a tritonclient exception ("StatusCode.UNAVAILABLE", ...), or ""."""
    status = getattr(exc, "status", None)
    value = status() if callable(status) else status
    return str(value or "")


def unavailable_error(
    options: ConnectionOptions, exc: BaseException, attempts: int
) -> ServerUnavailableError:
    if status_of(exc) == DEADLINE:
        return ServerUnavailableError(
            f"SMR server at {options.url} did not answer within {options.timeout:g} s; raise the timeout "
            "(--timeout) or lower the batch size (--batch-size)"
        )
    detail = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    hint = http_port_hint(options.url, detail)
    return ServerUnavailableError(
        f"SMR server at {options.url} is unavailable ({detail.strip() or 'no answer'}) after {attempts} "
        f"attempt(s)" + (hint or "; is it running? (start one with `smr serve`)")
    )


def request_error(options: ConnectionOptions, exc: BaseException, what: str) -> ServerRequestError:
    detail = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    status = status_of(exc).replace("StatusCode.", "") or "error"
    return ServerRequestError(
        f"SMR server at {options.url} refused {what}: {status}: {detail}"
        + http_port_hint(options.url, detail)
    )


def parse_outputs(result: Any, n: int, info: ModelInfo, *, embeddings: bool) -> BatchOutputs:
    """Read an ``InferResult`` into :class:`BatchOutputs`, checking shapes against the announced ones."""

    def get(name: str, width: int) -> np.ndarray:
        arr = result.as_numpy(name)
        if arr is None:
            raise ServerRequestError(f"the server's answer lacks output {name}")
        if arr.size != n * width:
            raise ServerRequestError(
                f"output {name} has shape {arr.shape}, expected ({n}, {width}); the server's config and its "
                "outputs disagree"
            )
        return arr.reshape(n, width)

    emb = result.as_numpy(EMBEDDING_OUTPUT) if embeddings else None
    return BatchOutputs(
        probabilities=get("PROBABILITIES", len(info.classes)),
        class_id=get("CLASS_ID", 1).reshape(n),
        maturity=get("MATURITY", len(info.lineages)),
        distance=get("CURVE_DISTANCE", len(info.lineages)),
        embedding=None if emb is None else emb.reshape(n, -1),
    )


def requested_output_names(info: ModelInfo, *, embeddings: bool) -> list[str]:
    names = [*OUTPUTS, EMBEDDING_OUTPUT] if embeddings else list(OUTPUTS)
    return names + [n for n in info.must_request if n not in names]


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def apply_request_settings(
    client: Any,
    batch_size: int | None,
    max_in_flight: int,
    *,
    resize: bool,
    margin: float,
    embeddings: bool,
    metrics: ClientMetrics | None,
) -> None:
    """Validate and set the request options that the blocking and the asyncio client share."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    client.requested_batch_size = batch_size
    client.max_in_flight = max_in_flight
    client.resize = resize
    client.margin = margin
    client.embeddings = embeddings
    client.metrics = metrics


class SMRClient:
    """A blocking client of the ``smr`` ensemble; thread-safe.

    Args:
        url: ``host:port`` of the server's gRPC endpoint.
        timeout: seconds one request (a whole batch) may take.
        retries: how often a request is retried while the server is UNAVAILABLE; back-off starts at
            ``backoff`` seconds and doubles each time.
        ssl, root_certificates, private_key, certificate_chain: TLS, optionally with a client certificate.
        compression: ``"gzip"`` or ``"deflate"`` for requests (patches compress ~2x; worth it on slow links).
        batch_size: images per request; default and upper bound: the server's ``max_batch_size``.
        max_in_flight: requests awaiting an answer at once (keeps the server's queue fed); the bound
            holds across threads that share the client.
        resize: resize images of the wrong size (PIL, bilinear) instead of rejecting them.
        margin: half-width in t of the band around a stage boundary in which a cell is borderline.
        embeddings: also fetch the 256-d embeddings.
        metrics: :class:`ClientMetrics` to record cells, latencies, retries and errors in.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str = "smr",
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
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
        import tritonclient.grpc as grpcclient

        self.options = ConnectionOptions(
            url=url,
            model=model,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
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
        self._grpc_module = grpcclient
        self._grpc = grpcclient.InferenceServerClient(**self.options.client_kwargs())
        self._info: ModelInfo | None = None
        self._server_version: str | None = None
        self._info_lock = threading.Lock()
        # bounds the requests in flight across every caller sharing this client (e.g. score-slides)
        self._gate = threading.BoundedSemaphore(max_in_flight)
        self._outputs: list | None = None  # known once the server's config is (requested_outputs)

    # -- connection ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.options.url

    def _with_retries(self, call: Callable[[], Any], what: str) -> Any:
        from tritonclient.utils import InferenceServerException

        attempts = 0
        while True:
            attempts += 1
            try:
                return call()
            except InferenceServerException as exc:
                status = status_of(exc)
                if status == UNAVAILABLE and attempts <= self.options.retries:
                    if self.metrics is not None:
                        self.metrics.retries.inc()
                    time.sleep(self.options.backoff_delay(attempts - 1))
                    continue
                if self.metrics is not None:
                    self.metrics.request_errors.labels(
                        status=status.replace("StatusCode.", "") or "UNKNOWN"
                    ).inc()
                if status in (UNAVAILABLE, DEADLINE):
                    raise unavailable_error(self.options, exc, attempts) from None
                raise request_error(self.options, exc, what) from None

    @property
    def info(self) -> ModelInfo:
        """Classes, lineages, image size and batch limit, fetched from the server on first use."""
        with self._info_lock:
            if self._info is None:
                config = self._with_retries(
                    lambda: self._grpc.get_model_config(
                        self.options.model, as_json=True, client_timeout=self.options.timeout
                    ),
                    f"the configuration of model {self.options.model!r}",
                )
                self._info = model_info_from_config(config)
                if self._info.name != self.options.model:
                    raise ModelConfigError(f"asked for model {self.options.model!r}, got {self._info.name!r}")
            return self._info

    @property
    def server_version(self) -> str:
        """The server's version from its metadata (Triton's, e.g. ``"2.51.0"``), fetched once."""
        with self._info_lock:
            if self._server_version is None:
                meta = self._with_retries(
                    lambda: self._grpc.get_server_metadata(as_json=True, client_timeout=self.options.timeout),
                    "its metadata",
                )
                self._server_version = str(meta.get("version", ""))
            return self._server_version

    def requested_outputs(self) -> list:
        """The outputs to ask for: what the results need, plus what the ensemble insists on."""
        if self._outputs is None:
            names = requested_output_names(self.info, embeddings=self.embeddings)
            self._outputs = [self._grpc_module.InferRequestedOutput(name) for name in names]
        return self._outputs

    @property
    def batch_size(self) -> int:
        """Images per request: the requested size, at most the server's ``max_batch_size``."""
        limit = self.info.max_batch_size
        return limit if self.requested_batch_size is None else min(self.requested_batch_size, limit)

    def is_ready(self) -> bool:
        """True when the server answers and the model is ready (no retries)."""
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self._grpc.is_model_ready(self.options.model, client_timeout=self.options.timeout))
        except InferenceServerException:
            return False

    def close(self) -> None:
        self._grpc.close()

    def __enter__(self) -> SMRClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference -------------------------------------------------------------------------------

    def infer(self, batch: np.ndarray) -> BatchOutputs:
        """One request: a checked (N, H, W, 3) uint8 batch with N <= the server's ``max_batch_size``."""
        info = self.info
        n = len(batch)
        if n > info.max_batch_size:
            raise ValueError(f"batch of {n} exceeds the server's max_batch_size {info.max_batch_size}")
        outputs = self.requested_outputs()
        inp = self._grpc_module.InferInput(INPUT, list(batch.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.uint8))

        def call() -> Any:
            return self._grpc.infer(
                self.options.model,
                [inp],
                outputs=outputs,
                client_timeout=self.options.timeout,
                compression_algorithm=self.options.grpc_compression,
            )

        metrics = self.metrics
        with self._gate:
            if metrics is not None:
                metrics.in_flight.inc()
            start = time.perf_counter()
            try:
                result = self._with_retries(call, f"a batch of {n} images")
            finally:
                if metrics is not None:
                    metrics.in_flight.dec()
        if metrics is not None:
            metrics.request_latency.observe(time.perf_counter() - start)
            metrics.requests.inc()
            metrics.cells_scored.inc(n)
        return parse_outputs(result, n, info, embeddings=self.embeddings)

    def infer_batches(self, batches: Iterable[tuple[K, np.ndarray]]) -> Iterator[tuple[K, BatchOutputs]]:
        """Send ``(key, batch)`` pairs with up to ``max_in_flight`` requests at once; yield
        ``(key, outputs)`` in completion order.

        ``batches`` is consumed lazily, so a producer (e.g. a slide reader) runs while requests are
        in flight. When a request (or the producer) fails, no new request is sent, the ones in flight
        are finished and yielded, and then the first error is raised: the caller keeps every result
        that came back.
        """
        source = iter(batches)
        pending: dict[Future[BatchOutputs], K] = {}
        error: BaseException | None = None
        exhausted = False
        pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="smr-infer")
        try:
            while True:
                while not exhausted and error is None and len(pending) < self.max_in_flight:
                    try:
                        key, batch = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    except Exception as exc:  # the producer failed: finish what is in flight first
                        error = exc
                        break
                    pending[pool.submit(self.infer, batch)] = key
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    key = pending.pop(future)
                    exc = future.exception()
                    if exc is not None:
                        error = error or exc
                        continue
                    yield key, future.result()
            if error is not None:
                raise error
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def classify(self, images: Iterable[np.ndarray], *, progress: bool = False) -> list[CellResult]:
        """Classify uint8 RGB arrays (any count); results come back in input order.

        Wrong-sized images are resized when the client was made with ``resize=True`` and rejected
        with :class:`~smr.clients.errors.InputError` otherwise.
        """
        info = self.info
        size = self.batch_size
        total = len(images) if isinstance(images, Sequence) else None

        def batches() -> Iterator[tuple[int, np.ndarray]]:
            for k, chunk in enumerate(batched(images, size)):
                yield k * size, stack_images(chunk, info.image_size, resize=self.resize, offset=k * size)

        parts: dict[int, BatchOutputs] = {}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit=" cells", desc="classify", dynamic_ncols=True)
        try:
            for start, outputs in self.infer_batches(batches()):
                parts[start] = outputs
                if bar is not None:
                    bar.update(len(outputs))
        finally:
            if bar is not None:
                bar.close()
        if not parts:
            return []
        ordered = BatchOutputs.concatenate([parts[k] for k in sorted(parts)])
        return cells_from_outputs(info, ordered, margin=self.margin)
