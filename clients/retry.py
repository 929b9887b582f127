"""When and for how long the SMR clients retry a request: one definition for both clients.

A request is retried when the server cannot answer *for now*:

- gRPC UNAVAILABLE: nothing listens (the server is starting or restarting), or the connection
  broke while the request was in flight;
- gRPC INTERNAL "Stub process ... is not healthy": what Triton answers while a python backend stub
  is dead, until ``smr serve``'s supervisor has restarted the server (seconds; docs/serving.md);
- gRPC NOT_FOUND "Request for unknown model" for a model the client has already used: what a
  server answers while it shuts down (its models are unloaded before its port closes). Before the
  model is known, NOT_FOUND means a wrong model name and is raised at once.

Every other error (a refused input, a deadline) is raised at once. Retries back off exponentially
with jitter and stop once the request's retry budget (:data:`RETRY_BUDGET` seconds from its first
attempt, enough for a supervised restart) or its number of retries is spent; the caller then raises
its clear "unavailable" error. This module is imported by :mod:`.client`, :mod:`.aio` and the CLI,
so it stays free of gRPC imports. Triton's message texts are tested in :mod:`smr.serving.triton_messages`,
shared with the server's supervisor.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from smr.serving.triton_messages import is_stub_unhealthy, is_unknown_model

__all__ = [
    "DEADLINE",
    "DEFAULT_BACKOFF",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_RETRIES",
    "INTERNAL",
    "NOT_FOUND",
    "RETRY_BUDGET",
    "UNAVAILABLE",
    "RetryBudget",
    "backoff_delay",
    "is_retryable",
    "is_stub_unhealthy",
    "status_of",
]

UNAVAILABLE = "StatusCode.UNAVAILABLE"
INTERNAL = "StatusCode.INTERNAL"
NOT_FOUND = "StatusCode.NOT_FOUND"
DEADLINE = "StatusCode.DEADLINE_EXCEEDED"

#: Seconds from a request's first attempt during which it is retried: `smr serve` detects a dead
#: stub within a second and its server is back within ~10-20 s on a CPU machine (BENCHMARKS.md, soak).
RETRY_BUDGET = 30.0
#: Most retries of one request; with the back-off below the budget, not this, ends the retries.
DEFAULT_RETRIES = 20
DEFAULT_BACKOFF = 0.5  # seconds before the first retry; doubles per retry ...
DEFAULT_MAX_BACKOFF = 4.0  # ... up to this, so that a server back in the budget is used within 4 s


def status_of(exc: BaseException) -> str:
    """The gRPC status string of a tritonclient exception ("StatusCode.UNAVAILABLE", ...), or ""."""
    status = getattr(exc, "status", None)
    value = status() if callable(status) else status
    return str(value or "")


def message_of(exc: BaseException) -> str:
    """The server's message of a tritonclient exception (without the status)."""
    return exc.message() if callable(getattr(exc, "message", None)) else str(exc)


def is_retryable(exc: BaseException, *, model_known: bool = False) -> bool:
    """True when retrying ``exc`` (a tritonclient exception) may succeed: UNAVAILABLE, INTERNAL from a
    dead python stub that the supervisor is about to replace, or, when the model was served before
    (``model_known``), NOT_FOUND "unknown model" from a server that is shutting down."""
    status = status_of(exc)
    if status == UNAVAILABLE:
        return True
    if status == INTERNAL:
        return is_stub_unhealthy(message_of(exc))
    return model_known and status == NOT_FOUND and is_unknown_model(message_of(exc))


def backoff_delay(
    attempt: int, backoff: float = DEFAULT_BACKOFF, max_backoff: float = DEFAULT_MAX_BACKOFF
) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): exponential with +-25 % jitter."""
    return min(max_backoff, backoff * 2**attempt) * random.uniform(0.75, 1.25)


class RetryBudget:
    """The retries left to one request: at most ``retries``, all within ``budget`` seconds of its start.

    ``clock`` (monotonic seconds) is injectable for tests; the caller does the sleeping.
    """

    def __init__(
        self,
        *,
        retries: int = DEFAULT_RETRIES,
        budget: float = RETRY_BUDGET,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retries, self.budget = retries, budget
        self.backoff, self.max_backoff = backoff, max_backoff
        self.clock = clock
        self.start = clock()
        self.retried = 0  # retries granted so far

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    def next_delay(self, wait: bool = True) -> float | None:
        """After a retryable failure: seconds to wait before retrying (0 without ``wait``: the retry
        goes to another server), or ``None`` when the budget is spent. The last wait is cut short so
        that the last retry happens within the budget."""
        remaining = self.budget - self.elapsed
        if self.retried >= self.retries or remaining <= 0:
            return None
        delay = min(backoff_delay(self.retried, self.backoff, self.max_backoff), remaining) if wait else 0.0
        self.retried += 1
        return delay
