"""Which errors the clients retry, and for how long: the budget with an injected clock, no real sleeping."""

from __future__ import annotations

import asyncio

import pytest
from tritonclient.utils import InferenceServerException

from smr.clients.aio import AsyncSMRClient
from smr.clients.client import SMRClient
from smr.clients.errors import ServerRequestError, ServerUnavailableError
from smr.clients.metrics import ClientMetrics
from smr.clients.retry import RETRY_BUDGET, RetryBudget, is_retryable
from smr.serving.launcher import free_port

STUB_DEAD = "Failed to process the request(s) for model 'smr_backbone_0_0', message: Stub process 'smr_backbone_0_0' is not healthy."  # noqa: E501


def _exc(status: str, message: str = "boom") -> InferenceServerException:
    return InferenceServerException(message, status=f"StatusCode.{status}")


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (_exc("UNAVAILABLE", "failed to connect to all addresses"), True),
        (_exc("UNAVAILABLE", "Socket closed"), True),
        (_exc("INTERNAL", STUB_DEAD), True),
        (_exc("INTERNAL", "onnxruntime: invalid dimensions"), False),
        (_exc("INVALID_ARGUMENT", "unexpected shape"), False),
        (_exc("DEADLINE_EXCEEDED", "Deadline Exceeded"), False),
        (_exc("NOT_FOUND", "Request for unknown model"), False),
        (InferenceServerException(STUB_DEAD), False),  # no status: not from the server's gRPC answer
        (ValueError("Stub process is not healthy"), False),
    ],
)
def test_what_is_retried(exc, retryable):
    assert is_retryable(exc) is retryable
    if "unknown model" not in str(exc):  # see below
        assert is_retryable(exc, model_known=True) is retryable


def test_an_unknown_model_is_retried_only_once_the_model_was_served():
    """A server that shuts down unloads its models before its port closes: "unknown model" from a
    server that served the model moments ago means it is going away; before, a wrong --model."""
    gone = _exc("NOT_FOUND", "Request for unknown model: 'smr' is not found")
    assert not is_retryable(gone) and is_retryable(gone, model_known=True)
    assert not is_retryable(_exc("NOT_FOUND", "no such file"), model_known=True)


class FakeTime:
    """A clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


def test_the_budget_ends_the_retries_within_30_seconds_whatever_the_jitter():
    for _ in range(200):
        t = FakeTime()
        budget = RetryBudget(clock=t.clock)
        while (delay := budget.next_delay()) is not None:
            t.sleep(delay)
        assert sum(t.sleeps) == pytest.approx(RETRY_BUDGET)  # the last wait is cut to the budget
        assert max(t.sleeps) <= 4.0 * 1.25 and len(t.sleeps) >= 8  # a returning server is seen soon
    assert RETRY_BUDGET == 30.0


def test_the_count_of_retries_still_caps_them():
    t = FakeTime()
    budget = RetryBudget(retries=3, clock=t.clock)
    delays = [budget.next_delay() for _ in range(5)]
    assert all(d is not None for d in delays[:3]) and delays[3:] == [None, None]


def _client(cls, t: FakeTime, **kwargs):
    client = cls(f"127.0.0.1:{free_port()}", **kwargs)  # nothing listens; the calls are replaced
    client._clock = t.clock
    client._sleep = t.async_sleep if cls is AsyncSMRClient else t.sleep
    return client


def _run(cls, t: FakeTime, call, **kwargs):
    """``call`` through the client's retries (the asyncio client is made in its event loop)."""
    if cls is AsyncSMRClient:

        async def go():
            async def acall():
                return call()

            async with _client(cls, t, **kwargs) as client:
                return await client._with_retries(lambda _grpc: acall(), "a test")

        return asyncio.run(go())
    with _client(cls, t, **kwargs) as client:
        return client._with_retries(lambda _grpc: call(), "a test")


@pytest.mark.parametrize("cls", [SMRClient, AsyncSMRClient])
def test_a_server_restarting_within_the_budget_is_waited_for(cls):
    """A dead stub (INTERNAL), then a server restarting (UNAVAILABLE), then an answer at 25 s."""
    t = FakeTime()
    metrics = ClientMetrics()
    start, calls = t.now, []

    def call():
        calls.append(t.now - start)
        if t.now - start < 10:
            raise _exc("INTERNAL", STUB_DEAD)
        if t.now - start < 25:
            raise _exc("UNAVAILABLE", "failed to connect to all addresses")
        return "answer"

    assert _run(cls, t, call, metrics=metrics) == "answer"
    assert 25 <= calls[-1] <= 25 + 5  # seen within one back-off of its return
    assert metrics.retries._value.get() == len(calls) - 1
    assert not list(metrics.request_errors.collect()[0].samples)


@pytest.mark.parametrize("cls", [SMRClient, AsyncSMRClient])
def test_a_stub_that_stays_dead_ends_in_the_clear_error_after_the_budget(cls):
    t = FakeTime()
    metrics = ClientMetrics()
    start, calls = t.now, []

    def call():
        calls.append(t.now)
        raise _exc("INTERNAL", STUB_DEAD)

    with pytest.raises(ServerUnavailableError) as info:
        _run(cls, t, call, metrics=metrics)
    message = str(info.value)
    assert f"after {len(calls)} attempt(s) in 30.0 s" in message
    assert "python stub of the server died" in message and "smr serve" in message
    assert calls[-1] - start == pytest.approx(RETRY_BUDGET)
    errors = {s.labels["status"]: s.value for s in metrics.request_errors.collect()[0].samples
              if s.name.endswith("_total")}  # fmt: skip
    assert errors == {"INTERNAL": 1.0}


@pytest.mark.parametrize("cls", [SMRClient, AsyncSMRClient])
def test_other_internal_errors_are_not_retried(cls):
    t = FakeTime()
    calls = []

    def call():
        calls.append(1)
        raise _exc("INTERNAL", "onnxruntime: invalid dimensions")

    with pytest.raises(ServerRequestError, match="refused a test: INTERNAL: onnxruntime"):
        _run(cls, t, call)
    assert calls == [1] and t.sleeps == []


def test_the_budget_is_an_option():
    t = FakeTime()

    def call():
        raise _exc("UNAVAILABLE", "failed to connect to all addresses")

    with pytest.raises(ServerUnavailableError, match=r"in 5\.0 s; is it running\?"):
        _run(SMRClient, t, call, retry_budget=5.0)
    assert sum(t.sleeps) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="retry_budget"):
        SMRClient("127.0.0.1:1", retry_budget=-1)
