"""What the blocking and the asyncio client share (``ClientCore``, ``RetriedRequest``): the same
options, the same attempts, waits, metrics and errors from either, with the gRPC calls replaced.

The tests drive each client through ``_with_retries`` and its endpoint pool, clock and sleep, so
that they hold for any arrangement of the shared code. They pass against the clients from before it
was shared as well, but for the second refusal of another model: the blocking client used to keep
that model's info after refusing it once, and hand it out the next time."""

from __future__ import annotations

import asyncio
import random

import pytest
from tritonclient.utils import InferenceServerException

from smr.clients.aio import AsyncSMRClient
from smr.clients.client import SMRClient
from smr.clients.errors import ModelConfigError, ServerRequestError, ServerUnavailableError
from smr.clients.metrics import ClientMetrics
from smr.serving.launcher import free_port
from tests.clients.helpers import config_json
from tests.clients.test_retry import FakeTime  # a clock that moves only when slept on

CLIENTS = [SMRClient, AsyncSMRClient]


def _exc(status: str, message: str = "boom") -> InferenceServerException:
    return InferenceServerException(message, status=f"StatusCode.{status}")


def _urls(n: int) -> str:
    return ",".join(f"127.0.0.1:{free_port()}" for _ in range(n))  # nothing listens: calls are replaced


class Scripted:
    """The gRPC calls of one request: each attempt gets the next of ``answers`` (an exception is
    raised, anything else returned) and records the endpoint it went to."""

    def __init__(self, answers) -> None:
        self.answers = list(answers)
        self.tried: list[str] = []
        self.urls: dict[int, str] = {}  # id of an endpoint's gRPC client -> its url

    def __call__(self, grpc):
        self.tried.append(self.urls[id(grpc)])
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def call_async(self, grpc):
        return self(grpc)


def _prepared(client, t: FakeTime, calls: Scripted):
    client._pool.clock = client._clock = t.clock
    client._sleep = t.async_sleep if isinstance(client, AsyncSMRClient) else t.sleep
    calls.urls.update({id(e.handle): e.url for e in client._pool.endpoints})
    return client


def _through(cls, answers, *, endpoints: int = 1, inference: bool = False, **kwargs):
    """One request through a fresh ``cls`` client whose attempts get ``answers`` in turn: (what it
    returned or raised, the urls attempted, the FakeTime, the client)."""
    t, calls = FakeTime(), Scripted(answers)
    random.seed(7)  # the back-off's jitter

    async def go_async():
        async with cls(_urls(endpoints), **kwargs) as client:
            _prepared(client, t, calls)
            try:
                return client, await client._with_retries(calls.call_async, "a test", inference=inference)
            except BaseException as exc:  # the outcome under test
                return client, exc

    if cls is AsyncSMRClient:
        client, outcome = asyncio.run(go_async())
        return outcome, calls.tried, t, client
    with cls(_urls(endpoints), **kwargs) as client:
        _prepared(client, t, calls)
        try:
            outcome = client._with_retries(calls, "a test", inference=inference)
        except BaseException as exc:  # the outcome under test
            outcome = exc
    return outcome, calls.tried, t, client


def _outstanding(client) -> list[int]:
    return [e.outstanding for e in client._pool.endpoints]


def _errors(metrics: ClientMetrics) -> dict[str, float]:
    return {s.labels["status"]: s.value for s in metrics.request_errors.collect()[0].samples
            if s.name.endswith("_total")}  # fmt: skip


@pytest.mark.parametrize("cls", CLIENTS)
def test_both_clients_wait_the_same_back_off_and_count_the_same(cls):
    metrics = ClientMetrics()
    answers = [_exc("UNAVAILABLE"), _exc("UNAVAILABLE"), _exc("UNAVAILABLE"), "answer"]
    outcome, tried, t, client = _through(cls, answers, backoff=0.5, metrics=metrics)
    assert outcome == "answer" and len(tried) == 4
    random.seed(7)
    expected = [random.uniform(0.75, 1.25) * min(4.0, 0.5 * 2**k) for k in range(3)]
    assert t.sleeps == pytest.approx(expected)
    assert metrics.retries._value.get() == 3 and metrics.failovers._value.get() == 0
    assert _errors(metrics) == {} and _outstanding(client) == [0]
    assert client._pool.endpoints[0].failures == 0  # the answer cleared its mark


@pytest.mark.parametrize("cls", CLIENTS)
def test_a_retry_goes_at_once_to_another_endpoint_while_one_is_live(cls):
    metrics = ClientMetrics()
    outcome, tried, t, client = _through(cls, [_exc("UNAVAILABLE"), "answer"], endpoints=2, metrics=metrics)
    assert outcome == "answer" and len(set(tried)) == 2
    assert t.sleeps == [0.0]  # failing over does not wait
    assert metrics.failovers._value.get() == 1 and metrics.retries._value.get() == 1
    failures = {s.labels["endpoint"]: s.value for s in metrics.endpoint_failures.collect()[0].samples
                if s.name.endswith("_total")}  # fmt: skip
    assert failures == {tried[0]: 1.0}
    assert _outstanding(client) == [0, 0]


@pytest.mark.parametrize("cls", CLIENTS)
@pytest.mark.parametrize(
    ("answer", "error", "message", "status"),
    [
        (_exc("INVALID_ARGUMENT", "unexpected shape"), ServerRequestError,
         "refused a test: INVALID_ARGUMENT: unexpected shape", "INVALID_ARGUMENT"),
        (_exc("DEADLINE_EXCEEDED", "Deadline Exceeded"), ServerUnavailableError,
         "did not answer within 7 s; raise the timeout", "DEADLINE_EXCEEDED"),
        (_exc("NOT_FOUND", "Request for unknown model"), ServerRequestError,
         "refused a test: NOT_FOUND: Request for unknown model", "NOT_FOUND"),
        (InferenceServerException("no status"), ServerRequestError, "refused a test: error: no status",
         "UNKNOWN"),
    ],
)  # fmt: skip
def test_what_retrying_cannot_fix_is_raised_at_once_as_the_same_clear_error(
    cls, answer, error, message, status
):
    metrics = ClientMetrics()
    outcome, tried, t, client = _through(cls, [answer], timeout=7, metrics=metrics)
    assert isinstance(outcome, error) and message in str(outcome)
    assert outcome.__cause__ is None and outcome.__suppress_context__  # raised from None
    assert len(tried) == 1 and t.sleeps == [] and _errors(metrics) == {status: 1.0}
    assert _outstanding(client) == [0] and client._pool.endpoints[0].failures == 0  # it answered


@pytest.mark.parametrize("cls", CLIENTS)
def test_unknown_model_is_retried_once_the_model_was_served(cls):
    gone = _exc("NOT_FOUND", "Request for unknown model: 'smr' is not found")
    outcome, tried, t, _ = _through(cls, [gone, "answer"], inference=True)
    assert outcome == "answer" and len(tried) == 2 and len(t.sleeps) == 1


@pytest.mark.parametrize("cls", CLIENTS)
def test_the_spent_budget_ends_in_the_unavailable_error_with_the_attempts(cls):
    metrics = ClientMetrics()
    outcome, tried, t, client = _through(cls, [_exc("UNAVAILABLE", "Socket closed")] * 4, retries=3,
                                         metrics=metrics)  # fmt: skip
    assert isinstance(outcome, ServerUnavailableError)
    assert f"is unavailable (Socket closed) after 4 attempt(s) in {sum(t.sleeps):.1f} s" in str(outcome)
    assert len(tried) == 4 and len(t.sleeps) == 3 and _errors(metrics) == {"UNAVAILABLE": 1.0}
    assert _outstanding(client) == [0]


@pytest.mark.parametrize("cls", CLIENTS)
def test_any_other_exception_abandons_the_attempt_and_propagates_unchanged(cls):
    metrics = ClientMetrics()
    bug = KeyError("not a server error")
    outcome, tried, t, client = _through(cls, [bug], endpoints=2, metrics=metrics)
    assert outcome is bug and len(tried) == 1 and t.sleeps == []
    assert _outstanding(client) == [0, 0] and all(e.failures == 0 for e in client._pool.endpoints)
    assert metrics.retries._value.get() == 0 and _errors(metrics) == {}


@pytest.mark.parametrize("cls", CLIENTS)
def test_an_inference_records_the_latency_of_its_endpoint(cls):
    metrics = ClientMetrics()
    outcome, tried, _, _ = _through(cls, ["answer"], inference=True, metrics=metrics)
    counts = {s.labels["endpoint"]: s.value for s in metrics.endpoint_latency.collect()[0].samples
              if s.name.endswith("_count")}  # fmt: skip
    assert outcome == "answer" and counts == {tried[0]: 1.0}
    _through(cls, ["answer"], inference=False, metrics=(other := ClientMetrics()))
    assert not [s for s in other.endpoint_latency.collect()[0].samples if s.name.endswith("_count")]


@pytest.mark.parametrize("cls", CLIENTS)
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"max_in_flight": 0}, "max_in_flight must be >= 1"),
        ({"margin": -0.1}, "margin must be >= 0"),
        ({"compression": "zstd"}, "valid: none, gzip, deflate"),
        ({"retry_budget": -1}, "retry_budget"),
    ],
)
def test_both_clients_check_their_options_alike(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls("127.0.0.1:1", **kwargs)


def test_both_clients_keep_the_same_settings():
    kwargs = {"model": "m", "timeout": 9.0, "retries": 2, "backoff": 0.1, "retry_budget": 3.0,
              "compression": "gzip", "batch_size": 5, "max_in_flight": 3, "resize": True, "margin": 0.2,
              "embeddings": True, "metrics": ClientMetrics()}  # fmt: skip
    url = _urls(2)
    blocking = SMRClient(url.replace(",", " , "), **kwargs)
    blocking.close()

    async def make():
        async with AsyncSMRClient(url.split(","), **kwargs) as client:
            return client

    aio = asyncio.run(make())
    for name in ("options", "requested_batch_size", "max_in_flight", "resize", "margin", "embeddings",
                 "metrics"):  # fmt: skip
        assert getattr(aio, name) == getattr(blocking, name), name
    assert aio.options.url == url and [e.url for e in aio._pool.endpoints] == url.split(",")


@pytest.mark.parametrize("cls", CLIENTS)
def test_a_server_of_another_model_is_refused(cls):
    def config(_grpc):
        return config_json()  # names the model "smr"

    async def config_async(grpc):
        return config(grpc)

    async def go():
        async with cls("127.0.0.1:1", model="other") as client:
            client._with_retries = lambda call, what, **kw: config_async(None)
            with pytest.raises(ModelConfigError, match="asked for model 'other', got 'smr'"):
                await client.get_info()
            with pytest.raises(ModelConfigError):  # asked again, refused again
                await client.get_info()

    if cls is AsyncSMRClient:
        asyncio.run(go())
        return
    with cls("127.0.0.1:1", model="other") as client:
        client._with_retries = lambda call, what, **kw: config(None)
        with pytest.raises(ModelConfigError, match="asked for model 'other', got 'smr'"):
            _ = client.info
        with pytest.raises(ModelConfigError):  # asked again, refused again
            _ = client.info
