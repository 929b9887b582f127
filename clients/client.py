"""``SMRClient``: classify cell patches with the SMR ensemble on a Triton server over gRPC.

The client learns everything from the server (classes, lineages and their stage boundaries, image
size, the largest batch), splits any number of images into batches no larger than the server
allows, keeps several requests in flight (threads around blocking gRPC calls, which release the
GIL), retries with exponential back-off while the server is unavailable or restarting (see
:mod:`.retry`), and returns typed
:class:`~smr.clients.results.CellResult` objects in input order.

What it shares with the asyncio client (:mod:`.aio`) is here too: :class:`ClientCore` (options,
endpoints, what a request is and what its answer means) and :class:`RetriedRequest` (when to try a
request again and which error ends it); each client keeps only its calls and its waiting.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from smr.core.contract import (
    BORDERLINE,
    CLASS_ID,
    CLASSIFICATION_OUTPUTS,
    CURVE_DISTANCE,
    EMBEDDING,
    ENSEMBLE,
    IMAGE,
    MATURITY,
    PROBABILITIES,
    REVIEW_OUTPUTS,
    STAGE,
)

from .endpoints import EndpointPool, RequestAttempts
from .errors import ModelConfigError, ServerRequestError, ServerUnavailableError
from .images import stack_images
from .metrics import ClientMetrics
from .model_info import ModelInfo, model_info_from_config
from .results import BatchOutputs, CellResult, cells_from_outputs
from .retry import (
    DEADLINE,
    DEFAULT_BACKOFF,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_RETRIES,
    RETRY_BUDGET,
    RetryBudget,
    backoff_delay,
    is_stub_unhealthy,
    message_of,
    status_of,
)

__all__ = [
    "SMRClient",
    "ConnectionOptions",
    "COMPRESSIONS",
    "DEFAULT_URL",
    "OUTPUTS",
    "check_url",
    "check_urls",
    "parse_outputs",
]

K = TypeVar("K")

DEFAULT_URL = "127.0.0.1:8001"
COMPRESSIONS = ("none", "gzip", "deflate")
#: gRPC's own ceiling (int32): a batch of 256 patches of 224 px is ~38 MB, past gRPC's 4 MB default.
MAX_MESSAGE_BYTES = 2**31 - 1
# the tensor names of smr.core.contract: what a client asks for and what it sends
OUTPUTS = CLASSIFICATION_OUTPUTS
INPUT = IMAGE

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


def check_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """The endpoints of ``urls``: comma-separated ``HOST:PORT``s (or a sequence of them), each checked,
    none twice; ``ValueError`` otherwise."""
    parts = urls.split(",") if isinstance(urls, str) else list(urls)
    checked = tuple(check_url(u) for u in (p.strip() for p in parts) if u)
    if not checked:
        raise ValueError(f"--url {urls!r}: no endpoint given; expected HOST:PORT[,HOST:PORT...]")
    twice = sorted({u for u in checked if checked.count(u) > 1})
    if twice:
        raise ValueError(f"--url {','.join(checked)}: {', '.join(twice)} given more than once")
    return checked


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
    """How to reach the server(s); shared by :class:`SMRClient` and the asyncio client.

    ``url`` is one ``HOST:PORT`` or several, comma-separated (see :mod:`.endpoints`)."""

    url: str = DEFAULT_URL  # one HOST:PORT or several, comma-separated (a sequence: join it with check_urls)
    model: str = ENSEMBLE
    timeout: float = 120.0  # seconds per request (a whole batch)
    retries: int = DEFAULT_RETRIES  # most extra attempts while the server is unavailable (retry.py)
    backoff: float = DEFAULT_BACKOFF  # first back-off in seconds; doubles per retry, capped at max_backoff
    max_backoff: float = DEFAULT_MAX_BACKOFF
    retry_budget: float = RETRY_BUDGET  # seconds from a request's first attempt during which it is retried
    ssl: bool = False
    root_certificates: str | None = None  # PEM file; None: the system's roots
    private_key: str | None = None  # PEM file for client-certificate (mutual) TLS
    certificate_chain: str | None = None  # PEM file for client-certificate (mutual) TLS
    compression: str | None = None  # "gzip" | "deflate" | None
    max_message_bytes: int = MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", ",".join(check_urls(self.url)))
        if self.compression not in (None, *COMPRESSIONS):
            raise ValueError(f"unknown compression {self.compression!r}; valid: {', '.join(COMPRESSIONS)}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.retry_budget < 0:
            raise ValueError(f"retry_budget must be >= 0 seconds, got {self.retry_budget}")
        if not 0 < self.max_message_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be in 1..{MAX_MESSAGE_BYTES}")
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("client-certificate TLS needs both private_key and certificate_chain")
        if not self.ssl and (self.root_certificates or self.private_key):
            raise ValueError("TLS files given but ssl is off; pass ssl=True (--ssl)")

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(self.url.split(","))

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

    def client_kwargs(self, url: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``tritonclient.grpc[.aio].InferenceServerClient`` of endpoint ``url``
        (default: the first)."""
        return {
            "url": url or self.urls[0],
            "ssl": self.ssl,
            "root_certificates": self.root_certificates,
            "private_key": self.private_key,
            "certificate_chain": self.certificate_chain,
            "channel_args": self.channel_args(),
        }

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based): exponential with +-25 % jitter."""
        return backoff_delay(attempt, self.backoff, self.max_backoff)

    def retry_state(self, clock: Callable[[], float] = time.monotonic) -> RetryBudget:
        """The retries one request may make (a fresh budget per request)."""
        return RetryBudget(
            retries=self.retries,
            budget=self.retry_budget,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            clock=clock,
        )


def unavailable_error(
    options: ConnectionOptions,
    exc: BaseException,
    attempts: int,
    seconds: float | None = None,
    url: str | None = None,
) -> ServerUnavailableError:
    if status_of(exc) == DEADLINE:
        return ServerUnavailableError(
            f"SMR server at {options.url} did not answer within {options.timeout:g} s; raise the timeout "
            "(--timeout) or lower the batch size (--batch-size)"
        )
    detail = message_of(exc)
    spent = "" if seconds is None else f" in {seconds:.1f} s"
    if is_stub_unhealthy(detail):
        hint = (
            "; a python stub of the server died and the server was not restarted in time (`smr serve` "
            "restarts it by itself within seconds; a plain tritonserver must be restarted by hand)"
        )
    else:
        hint = http_port_hint(url or options.url, detail) or "; is it running? (start one with `smr serve`)"
    return ServerUnavailableError(
        f"SMR server at {options.url} is unavailable ({detail.strip() or 'no answer'}) after {attempts} "
        f"attempt(s){spent}" + hint
    )


def request_error(
    options: ConnectionOptions, exc: BaseException, what: str, url: str | None = None
) -> ServerRequestError:
    url = url or options.url
    detail = message_of(exc)
    status = status_of(exc).replace("StatusCode.", "") or "error"
    return ServerRequestError(
        f"SMR server at {url} refused {what}: {status}: {detail}" + http_port_hint(url, detail)
    )


class RetriedRequest:
    """One request's attempts over the client's endpoints within its retry budget: when to try
    again, after how long, and which error to raise once that is no use. The blocking and the
    asyncio client share it; their loops differ only in whether they block or await::

        request = client._request(what)
        while True:
            with request.attempt() as grpc:  # the gRPC client of the endpoint the pool picked
                return call(grpc)  # answered (asyncio: ``return await call(grpc)``)
            sleep(request.delay)  # failed, worth retrying (0: failing over to another endpoint)

    A failed attempt (a tritonclient exception) ends its ``with`` block quietly when the request is
    worth retrying, and with the clear error (:class:`ServerUnavailableError`,
    :class:`ServerRequestError`) when it is not; any other exception (a cancelled task, a bug)
    abandons the attempt and propagates.
    """

    def __init__(
        self, options: ConnectionOptions, attempts: RequestAttempts, what: str, metrics: ClientMetrics | None
    ) -> None:
        self.options, self.attempts, self.what, self.metrics = options, attempts, what, metrics
        self.delay = 0.0  # seconds to wait before the next attempt, once one failed

    def attempt(self) -> RetriedRequest:
        """Start the next attempt on the endpoint the pool picks; the ``with`` block makes it."""
        self.attempts.start()
        return self

    def __enter__(self) -> Any:
        assert self.attempts.endpoint is not None, "attempt() first"
        return self.attempts.endpoint.handle

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None:
            self.attempts.succeeded()
            return False
        from tritonclient.utils import InferenceServerException

        if isinstance(exc, InferenceServerException):
            self.delay = self.delay_or_raise(exc)
            return True
        self.attempts.abandoned()
        return False

    def delay_or_raise(self, exc: BaseException) -> float:
        """After a failed attempt: the seconds to wait before the next one (0: failing over to another
        endpoint), or the clear error raised (from ``None``) when ``exc`` is not retryable or the
        request's retry budget is spent."""
        attempts = self.attempts
        assert attempts.endpoint is not None, "after an attempt only"
        url = attempts.endpoint.url
        retryable = attempts.retryable(exc)
        delay = attempts.failed(exc)
        self._count_failure(exc, url, retryable=retryable, delay=delay)
        if delay is not None:
            return delay
        if retryable or status_of(exc) == DEADLINE:
            raise unavailable_error(
                self.options, exc, attempts.attempts, attempts.budget.elapsed, url
            ) from None
        raise request_error(self.options, exc, self.what, url) from None

    def _count_failure(self, exc: BaseException, url: str, *, retryable: bool, delay: float | None) -> None:
        """The failed attempt in the metrics: a failure of its endpoint when the pool passes it over
        for it (``retryable``), then a retry (a failover when sent at once, ``delay`` 0) or, with no
        ``delay``, the request's error by gRPC status."""
        metrics = self.metrics
        if metrics is None:
            return
        if retryable:
            metrics.endpoint_failures.labels(endpoint=url).inc()
        if delay is not None:
            metrics.retries.inc()
            if delay == 0:
                metrics.failovers.inc()
        else:
            status = status_of(exc).replace("StatusCode.", "") or "UNKNOWN"
            metrics.request_errors.labels(status=status).inc()


def parse_outputs(result: Any, n: int, info: ModelInfo, *, embeddings: bool) -> BatchOutputs:
    """Read an ``InferResult`` into :class:`BatchOutputs`, checking shapes against the announced ones.

    ``STAGE`` and ``BORDERLINE`` are read when the ensemble serves them (:attr:`ModelInfo.serves_review`)."""

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

    emb = result.as_numpy(EMBEDDING) if embeddings else None
    n_lineages = len(info.lineages)
    return BatchOutputs(
        probabilities=get(PROBABILITIES, len(info.classes)),
        class_id=get(CLASS_ID, 1).reshape(n),
        maturity=get(MATURITY, n_lineages),
        distance=get(CURVE_DISTANCE, n_lineages),
        embedding=None if emb is None else emb.reshape(n, -1),
        stage=get(STAGE, n_lineages) if info.serves_review else None,
        borderline=get(BORDERLINE, 1).reshape(n) if info.serves_review else None,
    )


def requested_output_names(info: ModelInfo, *, embeddings: bool) -> list[str]:
    names = [*OUTPUTS, EMBEDDING] if embeddings else list(OUTPUTS)
    if info.serves_review:
        names += REVIEW_OUTPUTS
    return names + [n for n in info.must_request if n not in names]


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class ClientCore:
    """What the blocking :class:`SMRClient` and the asyncio client share: their options, checked
    once; their endpoints; what the server said (model, version); how a request is retried
    (:class:`RetriedRequest`); what an inference request is and what its answer means.

    A subclass adds only what blocks or awaits: the tritonclient module it speaks
    (:meth:`_import_grpc`), its own state and way of waiting (:meth:`_setup`), and the calls.
    The arguments are :class:`SMRClient`'s.
    """

    requested_batch_size: int | None  # None: the server's max_batch_size
    max_in_flight: int
    resize: bool
    margin: float | None
    embeddings: bool
    metrics: ClientMetrics | None

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        model: str = ENSEMBLE,
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
        margin: float | None = None,
        embeddings: bool = False,
        metrics: ClientMetrics | None = None,
    ) -> None:
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
        self._apply_request_settings(batch_size, max_in_flight, resize, margin, embeddings, metrics)
        self._connect()
        self._setup()

    def _apply_request_settings(
        self,
        batch_size: int | None,
        max_in_flight: int,
        resize: bool,
        margin: float | None,
        embeddings: bool,
        metrics: ClientMetrics | None,
    ) -> None:
        """Check and set the request options."""
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if margin is not None and margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.requested_batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.resize = resize
        self.margin = margin
        self.embeddings = embeddings
        self.metrics = metrics

    def _connect(self) -> None:
        """A gRPC client per endpoint (connected on first use), and nothing known of the server yet."""
        grpc_module = self._grpc_module = self._import_grpc()
        self._pool = EndpointPool(
            self.options.urls,
            lambda url: grpc_module.InferenceServerClient(**self.options.client_kwargs(url)),
        )
        self._info: ModelInfo | None = None
        self._server_version: str | None = None
        self._outputs: list | None = None  # known once the server's config is (_requested_outputs)
        self._clock: Callable[[], float] = time.monotonic  # of the retries; replaced by tests

    @staticmethod
    def _import_grpc() -> Any:
        """tritonclient's gRPC module of the subclass: ``tritonclient.grpc`` or ``tritonclient.grpc.aio``."""
        raise NotImplementedError

    def _setup(self) -> None:
        """The subclass's own state; at least ``_sleep``, its way of waiting between attempts."""
        raise NotImplementedError

    # -- connection ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.options.url

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The servers' ``HOST:PORT``s (one or more)."""
        return self.options.urls

    def _request(self, what: str, *, inference: bool = False) -> RetriedRequest:
        """The attempts of one request (``what`` it is, for its error): the endpoints, a fresh retry
        budget; an inference (made once the model is known) records per-endpoint latency."""
        metrics = self.metrics
        observe = metrics.observe_endpoint if inference and metrics is not None else None
        budget = self.options.retry_state(self._clock)
        attempts = RequestAttempts(self._pool, budget, model_known=inference, observe=observe)
        return RetriedRequest(self.options, attempts, what, metrics)

    # -- what the server is asked, and what its answers mean -------------------------------------

    def _get_model_config(self, grpc: Any) -> Any:
        """Ask ``grpc`` (an endpoint's client) for the model's configuration."""
        return grpc.get_model_config(self.options.model, as_json=True, client_timeout=self.options.timeout)

    @property
    def _model_config_what(self) -> str:
        return f"the configuration of model {self.options.model!r}"

    def _model_info(self, config: Any) -> ModelInfo:
        """The model's :class:`ModelInfo` from its configuration; :class:`ModelConfigError` for another
        model than the one asked for."""
        info = model_info_from_config(config)
        if info.name != self.options.model:
            raise ModelConfigError(f"asked for model {self.options.model!r}, got {info.name!r}")
        return info

    def _get_server_metadata(self, grpc: Any) -> Any:
        """Ask ``grpc`` (an endpoint's client) for the server's metadata."""
        return grpc.get_server_metadata(as_json=True, client_timeout=self.options.timeout)

    @staticmethod
    def _version_of(metadata: Any) -> str:
        return str(metadata.get("version", ""))

    def _batch_size_of(self, info: ModelInfo) -> int:
        """Images per request: the requested size, at most the server's ``max_batch_size``."""
        limit = info.max_batch_size
        return limit if self.requested_batch_size is None else min(self.requested_batch_size, limit)

    def _requested_outputs(self, info: ModelInfo) -> list:
        """The outputs to ask for: what the results need, plus what the ensemble insists on."""
        if self._outputs is None:
            names = requested_output_names(info, embeddings=self.embeddings)
            self._outputs = [self._grpc_module.InferRequestedOutput(name) for name in names]
        return self._outputs

    def _infer_call(self, info: ModelInfo, batch: np.ndarray) -> tuple[Callable[[Any], Any], str]:
        """The inference request of a checked (N, H, W, 3) uint8 ``batch`` with N <= the server's
        ``max_batch_size``, as a call of an endpoint's client, and what it is (for its error)."""
        n = len(batch)
        if n > info.max_batch_size:
            raise ValueError(f"batch of {n} exceeds the server's max_batch_size {info.max_batch_size}")
        outputs = self._requested_outputs(info)
        inp = self._grpc_module.InferInput(INPUT, list(batch.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.uint8))

        def call(grpc: Any) -> Any:
            return grpc.infer(
                self.options.model,
                [inp],
                outputs=outputs,
                client_timeout=self.options.timeout,
                compression_algorithm=self.options.grpc_compression,
            )

        return call, f"a batch of {n} images"

    def _answer(self, result: Any, n: int, info: ModelInfo, started: float) -> BatchOutputs:
        """The outputs of an answered request of ``n`` images sent at ``started``
        (``time.perf_counter``), recorded in the metrics."""
        metrics = self.metrics
        if metrics is not None:
            metrics.request_latency.observe(time.perf_counter() - started)
            metrics.requests.inc()
            metrics.cells_scored.inc(n)
        return parse_outputs(result, n, info, embeddings=self.embeddings)

    def _cells(self, info: ModelInfo, parts: list[BatchOutputs]) -> list[CellResult]:
        """The cells of the outputs ``parts``, in their order."""
        if not parts:
            return []
        return cells_from_outputs(info, BatchOutputs.concatenate(parts), margin=self.margin)


class SMRClient(ClientCore):
    """A blocking client of the ``smr`` ensemble; thread-safe.

    Args:
        url: ``host:port`` of the server's gRPC endpoint, or several, comma-separated (or a list):
            requests go to the one with the fewest outstanding and fail over (:mod:`.endpoints`).
        timeout: seconds one request (a whole batch) may take.
        retries: how often a request is retried at most while the server is unavailable or restarting
            (:func:`~smr.clients.retry.is_retryable`), within ``retry_budget`` seconds of its first
            attempt; back-off starts at ``backoff`` seconds and doubles each time (up to 4 s).
        ssl, root_certificates, private_key, certificate_chain: TLS, optionally with a client certificate.
        compression: ``"gzip"`` or ``"deflate"`` for requests (patches compress ~2x; worth it on slow links).
        batch_size: images per request; default and upper bound: the server's ``max_batch_size``.
        max_in_flight: requests awaiting an answer at once (keeps the server's queue fed); the bound
            holds across threads that share the client.
        resize: resize images of the wrong size (PIL, bilinear) instead of rejecting them.
        margin: a cell whose two most probable classes differ by less than this in SVM probability is
            flagged for review (:mod:`.results`); None: the server's margin.
        embeddings: also fetch the 256-d embeddings.
        metrics: :class:`ClientMetrics` to record cells, latencies, retries and errors in.
    """

    @staticmethod
    def _import_grpc() -> Any:
        import tritonclient.grpc as grpcclient

        return grpcclient

    def _setup(self) -> None:
        self._grpc = self._pool.endpoints[0].handle  # the first endpoint's gRPC client
        self._info_lock = threading.Lock()
        # bounds the requests in flight across every caller sharing this client (e.g. score-slides)
        self._gate = threading.BoundedSemaphore(self.max_in_flight)
        self._sleep: Callable[[float], None] = time.sleep  # of the retries; replaced by tests

    # -- connection ------------------------------------------------------------------------------

    def _with_retries(self, call: Callable[[Any], Any], what: str, *, inference: bool = False) -> Any:
        """``call(grpc_client)`` on the endpoints in turn (see :mod:`.endpoints`) until it is answered,
        or the clear error once retrying is no use (:class:`RetriedRequest`)."""
        request = self._request(what, inference=inference)
        while True:
            with request.attempt() as grpc:
                return call(grpc)
            self._sleep(request.delay)

    @property
    def info(self) -> ModelInfo:
        """Classes, lineages, image size and batch limit, fetched from the server on first use."""
        with self._info_lock:
            if self._info is None:
                config = self._with_retries(self._get_model_config, self._model_config_what)
                self._info = self._model_info(config)
            return self._info

    @property
    def server_version(self) -> str:
        """The server's version from its metadata (Triton's, e.g. ``"2.51.0"``), fetched once."""
        with self._info_lock:
            if self._server_version is None:
                metadata = self._with_retries(self._get_server_metadata, "its metadata")
                self._server_version = self._version_of(metadata)
            return self._server_version

    def requested_outputs(self) -> list:
        """The outputs to ask for: what the results need, plus what the ensemble insists on."""
        return self._requested_outputs(self.info)

    @property
    def batch_size(self) -> int:
        """Images per request: the requested size, at most the server's ``max_batch_size``."""
        return self._batch_size_of(self.info)

    def is_ready(self) -> bool:
        """True when a server answers and the model is ready there (no retries)."""
        from tritonclient.utils import InferenceServerException

        for endpoint in self._pool.endpoints:
            try:
                if endpoint.handle.is_model_ready(self.options.model, client_timeout=self.options.timeout):
                    return True
            except InferenceServerException:
                continue
        return False

    def close(self) -> None:
        for endpoint in self._pool.endpoints:
            endpoint.handle.close()

    def __enter__(self) -> SMRClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference -------------------------------------------------------------------------------

    def infer(self, batch: np.ndarray) -> BatchOutputs:
        """One request: a checked (N, H, W, 3) uint8 batch with N <= the server's ``max_batch_size``."""
        info = self.info
        call, what = self._infer_call(info, batch)
        with self._gate, self._in_flight():
            start = time.perf_counter()
            result = self._with_retries(call, what, inference=True)
        return self._answer(result, len(batch), info, start)

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Count a request in the metrics' requests in flight while it is."""
        gauge = None if self.metrics is None else self.metrics.in_flight
        if gauge is not None:
            gauge.inc()
        try:
            yield
        finally:
            if gauge is not None:
                gauge.dec()

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
                    failure = future.exception()
                    if failure is not None:
                        error = error or failure
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
        return self._cells(info, [parts[k] for k in sorted(parts)])
