"""Several SMR servers behind one client: least outstanding requests, failover, dead endpoints retried later.

Both clients (:class:`~smr.clients.client.SMRClient` and the asyncio one) keep an
:class:`EndpointPool` of their ``--url`` endpoints (one or more) and run every request through
:class:`RequestAttempts`:

- each attempt goes to the live endpoint with the fewest requests outstanding (ties in turn);
- an attempt that fails retryably (:func:`~smr.clients.retry.is_retryable`: the server is gone,
  restarting or has a dead stub) marks its endpoint dead for :data:`DEAD_FOR` seconds, doubling
  per failure in a row up to :data:`MAX_DEAD_FOR`, and the request is sent again at once to
  another live endpoint; with none left it waits its back-off and tries the endpoint due back
  first. Once its time is up a dead endpoint gets requests again (the next one tells whether it
  is back); one success clears the mark;
- every request ends with exactly one answer or one error: a batch that failed over is answered
  by one endpoint only, so the caller (slide scoring, its journal) sees each batch once.

The servers must serve the same model repository; the model's configuration is read from
whichever endpoint answers first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .retry import RetryBudget, is_retryable

__all__ = ["DEAD_FOR", "MAX_DEAD_FOR", "Endpoint", "EndpointPool", "RequestAttempts"]

log = logging.getLogger(__name__)

DEAD_FOR = 2.0  # seconds an endpoint is passed over after a retryable failure ...
MAX_DEAD_FOR = 30.0  # ... doubling per failure in a row, up to this


@dataclass(eq=False)
class Endpoint:
    """One server: its address, its gRPC client and what the pool knows about it."""

    url: str
    index: int
    handle: Any  # tritonclient's InferenceServerClient (blocking or asyncio) for ``url``
    outstanding: int = 0  # attempts sent and not yet answered
    failures: int = 0  # retryable failures in a row
    dead_until: float = 0.0  # clock time before which it is passed over

    def alive(self, now: float) -> bool:
        return now >= self.dead_until


class EndpointPool:
    """The endpoints of one client; thread-safe (the blocking client calls it from its pool threads)."""

    def __init__(
        self,
        urls: Sequence[str],
        connect: Callable[[str], Any],
        *,
        clock: Callable[[], float] = time.monotonic,
        dead_for: float = DEAD_FOR,
        max_dead_for: float = MAX_DEAD_FOR,
    ) -> None:
        if not urls:
            raise ValueError("no endpoint given")
        self.clock = clock
        self.dead_for, self.max_dead_for = dead_for, max_dead_for
        self.endpoints = [Endpoint(url, i, connect(url)) for i, url in enumerate(urls)]
        self._lock = threading.Lock()
        self._turn = 0  # where the search for the least loaded endpoint starts (ties go round)

    def __len__(self) -> int:
        return len(self.endpoints)

    def acquire(self) -> Endpoint:
        """The endpoint for the next attempt, its outstanding count raised: the live endpoint with the
        fewest attempts outstanding, else, when every endpoint is marked dead, the one due back first."""
        with self._lock:
            now = self.clock()
            n = len(self.endpoints)
            live = [e for e in self.endpoints if e.alive(now)]
            if live:
                best = min(live, key=lambda e: (e.outstanding, (e.index - self._turn) % n))
                self._turn = (best.index + 1) % n
            else:
                best = min(self.endpoints, key=lambda e: (e.dead_until, e.index))
            best.outstanding += 1
            return best

    def release(self, endpoint: Endpoint, *, dead: bool = False, answered: bool = False) -> None:
        """An attempt on ``endpoint`` ended: ``dead`` after a retryable failure (the endpoint is passed
        over for a while), ``answered`` when the server answered (its mark is cleared)."""
        with self._lock:
            endpoint.outstanding -= 1
            now = self.clock()
            if dead:
                if endpoint.alive(now):  # the requests that were in flight with it add no new failure
                    endpoint.failures += 1
                    seconds = min(self.max_dead_for, self.dead_for * 2 ** (endpoint.failures - 1))
                    endpoint.dead_until = now + seconds
                    if len(self.endpoints) > 1:
                        log.warning(
                            "SMR server %s failed (%d in a row); passing it over for %.0f s",
                            endpoint.url,
                            endpoint.failures,
                            seconds,
                        )
            elif answered and endpoint.failures:
                if len(self.endpoints) > 1:
                    log.info("SMR server %s answers again", endpoint.url)
                endpoint.failures, endpoint.dead_until = 0, 0.0

    def any_alive(self, besides: Endpoint | None = None) -> bool:
        with self._lock:
            now = self.clock()
            return any(e.alive(now) for e in self.endpoints if e is not besides)


class RequestAttempts:
    """The attempts of one request over the pool, within its retry budget.

    The caller's loop: ``endpoint = attempts.start()``; call ``endpoint.handle``; then
    ``attempts.succeeded()``, or ``delay = attempts.failed(exc)`` (``None``: give up with an error;
    else wait ``delay`` seconds and start again), or ``attempts.abandoned()`` (cancelled).
    """

    def __init__(
        self,
        pool: EndpointPool,
        budget: RetryBudget,
        *,
        model_known: bool = False,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.pool, self.budget = pool, budget
        self.model_known = model_known  # see retry.is_retryable
        self.observe = observe  # called with (url, seconds) of the answered attempt
        self.endpoint: Endpoint | None = None  # of the current (or last) attempt
        self.failovers = 0  # retries sent at once to another endpoint
        self._started = 0.0

    @property
    def attempts(self) -> int:
        return self.budget.retried + 1

    def start(self) -> Endpoint:
        self.endpoint = self.pool.acquire()
        self._started = self.pool.clock()
        return self.endpoint

    def succeeded(self) -> None:
        """The attempt was answered (its seconds go to ``observe``)."""
        self.pool.release(self.endpoint, answered=True)
        if self.observe is not None:
            self.observe(self.endpoint.url, self.pool.clock() - self._started)

    def abandoned(self) -> None:
        self.pool.release(self.endpoint)

    def retryable(self, exc: BaseException) -> bool:
        return is_retryable(exc, model_known=self.model_known)

    def failed(self, exc: BaseException) -> float | None:
        """The attempt failed with ``exc``: seconds to wait before the next attempt (0 when another
        endpoint is live: fail over at once), or ``None`` when ``exc`` is not retryable or the budget
        is spent."""
        if not self.retryable(exc):
            self.pool.release(self.endpoint, answered=True)  # it answered, with an error
            return None
        self.pool.release(self.endpoint, dead=True)
        failover = self.pool.any_alive(besides=self.endpoint)
        delay = self.budget.next_delay(wait=not failover)
        if delay is not None and failover:
            self.failovers += 1
        return delay
