"""Several endpoints from one client: the selection policy, dead marks, and failover with fake servers.

The real servers (two `smr serve`, one stopped mid-run) are in test_multi_server.py.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from smr.clients.aio import AsyncSMRClient
from smr.clients.client import SMRClient, check_urls
from smr.clients.endpoints import EndpointPool
from smr.clients.errors import ServerUnavailableError
from smr.clients.metrics import ClientMetrics
from smr.clients.results import BatchOutputs, cells_from_outputs
from smr.serving.launcher import free_port
from tests.clients.helpers import paper_info


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pool(n: int, clock: Clock | None = None) -> EndpointPool:
    return EndpointPool([f"h:{i}" for i in range(n)], lambda url: url, clock=clock or Clock())


def test_urls_are_split_checked_and_kept_once():
    assert check_urls("a:1, b:2,") == ("a:1", "b:2")
    assert check_urls(["a:1", "b:2"]) == ("a:1", "b:2")
    with pytest.raises(ValueError, match="a:1 given more than once"):
        check_urls("a:1,b:2,a:1")
    with pytest.raises(ValueError, match="no endpoint given"):
        check_urls(" , ")
    with pytest.raises(ValueError, match="without a scheme"):
        check_urls("a:1,http://b:2")
    client = SMRClient(f"127.0.0.1:{free_port()} ,127.0.0.1:{free_port()}")
    assert len(client.endpoints) == 2 and client.url == ",".join(client.endpoints)
    client.close()


def test_least_outstanding_with_ties_taken_in_turn():
    pool = _pool(3)
    a, b, c = pool.endpoints
    assert [pool.acquire() for _ in range(6)] == [a, b, c, a, b, c]  # 2 outstanding each
    pool.release(b, answered=True)
    assert pool.acquire() is b  # the only one with 1 outstanding
    pool.release(c, answered=True)
    pool.release(c, answered=True)
    assert [e.outstanding for e in pool.endpoints] == [2, 2, 0]
    assert pool.acquire() is c and pool.acquire() is c  # least outstanding beats taking turns
    assert pool.acquire() is a


def test_a_dead_endpoint_is_passed_over_then_tried_again_later():
    clock = Clock()
    pool = _pool(2, clock)
    a, b = pool.endpoints
    assert pool.acquire() is a
    pool.release(a, dead=True)  # 2 s
    assert not pool.any_alive(besides=b) and pool.any_alive(besides=a)
    assert [pool.acquire() for _ in range(3)] == [b, b, b]  # even with 3 outstanding on b
    clock.now += 2.0
    assert pool.acquire() is a  # due back: tried again
    pool.release(a, dead=True)  # failed again: 4 s now
    clock.now += 3.9
    assert pool.acquire() is b
    clock.now += 0.1
    assert pool.acquire() is a
    pool.release(a, answered=True)  # back: the mark is cleared
    assert a.failures == 0 and a.alive(clock.now)


def test_failures_of_requests_in_flight_with_a_dead_endpoint_do_not_lengthen_its_mark():
    clock = Clock()
    pool = _pool(2, clock)
    a = pool.endpoints[0]
    held = [pool.acquire() for _ in range(4)]  # a, b, a, b
    for e in held:
        if e is a:
            pool.release(e, dead=True)
    assert a.failures == 1 and a.dead_until == clock.now + 2.0


def test_with_every_endpoint_dead_the_one_due_back_first_is_tried():
    clock = Clock()
    pool = _pool(3, clock)
    a, b, c = pool.endpoints
    for e in (a, b, c):
        pool.acquire()
        pool.release(e, dead=True)
        clock.now += 0.5  # marked one after the other: a is due back first
    assert not pool.any_alive()
    assert pool.acquire() is a and pool.acquire() is a  # outstanding counts do not matter here
    a.dead_until = c.dead_until + 1
    assert pool.acquire() is b


# --------------------------------------------------------------------------------------------------
# failover through the clients, with fake servers in place of the gRPC clients


class FakeResult:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def as_numpy(self, name: str):
        return self.arrays.get(name)


def reference(info, images: np.ndarray) -> BatchOutputs:
    """What a fake server answers: outputs computed from each image alone (so any server agrees)."""
    mean = images.reshape(len(images), -1).mean(axis=1) / 255.0
    k = len(info.classes)
    logits = np.stack([np.cos(mean * (j + 1) * 7.0) for j in range(k)], axis=1)
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    lins = len(info.lineages)
    maturity = np.stack([mean * (j + 1) / lins for j in range(lins)], axis=1).astype(np.float32)
    return BatchOutputs(probs, probs.argmax(axis=1).astype(np.int32), maturity, 1 - maturity)


class FakeServer:
    """A gRPC client stand-in: answers ``infer`` like a server, or UNAVAILABLE once ``dead``."""

    def __init__(self, info, name: str) -> None:
        self.info, self.name = info, name
        self.dead = threading.Event()
        self.calls = 0
        self.lock = threading.Lock()

    def infer(self, model, inputs, outputs=None, client_timeout=None, compression_algorithm=None):
        with self.lock:
            self.calls += 1
        if self.dead.is_set():
            raise InferenceServerException("Socket closed", status="StatusCode.UNAVAILABLE")
        images = np.frombuffer(inputs[0]._get_content(), np.uint8).reshape(inputs[0].shape())
        out = reference(self.info, images)
        return FakeResult({"PROBABILITIES": out.probabilities, "CLASS_ID": out.class_id[:, None],
                           "MATURITY": out.maturity, "CURVE_DISTANCE": out.distance})  # fmt: skip

    def close(self) -> None:
        pass


class AsyncFakeServer(FakeServer):
    async def infer(self, *args, **kwargs):  # type: ignore[override]
        await asyncio.sleep(0)
        return FakeServer.infer(self, *args, **kwargs)

    async def close(self) -> None:
        pass


def _fake(client, cls=FakeServer) -> list[FakeServer]:
    info = paper_info(image_size=8, max_batch_size=4)
    client._info = info
    servers = [cls(info, e.url) for e in client._pool.endpoints]
    for e, server in zip(client._pool.endpoints, servers, strict=True):
        e.handle.close() if cls is FakeServer else None
        e.handle = server
    return servers


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(n)]


def _histogram_counts(metrics: ClientMetrics) -> dict[str, float]:
    return {s.labels["endpoint"]: s.value for s in metrics.endpoint_latency.collect()[0].samples
            if s.name.endswith("_count")}  # fmt: skip


def _expected(client, images):
    info = client._info
    return cells_from_outputs(info, reference(info, np.stack(images)), margin=client.margin)


def test_batches_are_spread_and_a_dying_endpoint_is_failed_over_without_losing_or_repeating_a_cell():
    urls = ",".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    metrics = ClientMetrics()
    with SMRClient(urls, batch_size=2, max_in_flight=4, metrics=metrics) as client:
        a, b = _fake(client)
        images = _images(61)
        original_infer = b.infer

        def infer_then_die(*args, **kwargs):  # b answers 5 requests, then is gone for good
            if b.calls >= 5:
                b.dead.set()
            return original_infer(*args, **kwargs)

        b.infer = infer_then_die
        cells = client.classify(images)
        assert cells == _expected(client, images)  # each cell once, in order, as one server answers
        counts = _histogram_counts(metrics)
        assert counts[a.name] + counts[b.name] == 31 and counts[b.name] == 5  # one answer per batch
        assert metrics.failovers._value.get() >= 1
        failures = {s.labels["endpoint"]: s.value for s in metrics.endpoint_failures.collect()[0].samples
                    if s.name.endswith("_total")}  # fmt: skip
        assert failures.get(b.name, 0) >= 1 and a.name not in failures
        assert b.calls < 5 + 1 + 4  # passed over once dead: not tried for every batch
        assert metrics.cells_scored._value.get() == 61


def test_a_dead_endpoint_gets_requests_again_once_it_is_back():
    urls = ",".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    with SMRClient(urls, batch_size=2, max_in_flight=1) as client:
        a, b = _fake(client)
        clock = Clock()
        client._pool.clock = clock
        b.dead.set()
        images = _images(8)
        assert client.classify(images) == _expected(client, images)
        assert b.calls == 1  # tried once, then passed over
        b.dead.clear()
        calls_a = a.calls
        clock.now += 2.0  # its mark runs out
        assert client.classify(images) == _expected(client, images)
        assert b.calls == 1 + 2 and a.calls == calls_a + 2  # back in the rotation


def test_with_every_endpoint_down_the_budget_ends_in_the_clear_error():
    urls = ",".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    with SMRClient(urls, batch_size=2, retry_budget=3.0) as client:
        servers = _fake(client)
        slept: list[float] = []
        clock = Clock()
        client._pool.clock = client._clock = clock

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            clock.now += seconds

        client._sleep = sleep
        for s in servers:
            s.dead.set()
        with pytest.raises(ServerUnavailableError, match=r"SMR server at 127.*,127.* is unavailable"):
            client.classify(_images(2))
        assert sum(slept) == pytest.approx(3.0)
        assert all(s.calls >= 1 for s in servers) and sum(s.calls for s in servers) >= 3  # retried


def test_the_async_client_fails_over_too():
    urls = ",".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    metrics = ClientMetrics()
    images = _images(21)

    async def go():
        async with AsyncSMRClient(urls, batch_size=2, max_in_flight=3, metrics=metrics) as client:
            a, b = _fake(client, AsyncFakeServer)
            b.dead.set()
            cells = await client.classify(images)
            return client, a, b, cells

    client, a, b, cells = asyncio.run(go())
    assert cells == _expected(client, images)
    assert _histogram_counts(metrics) == {a.name: 11.0}
    assert metrics.failovers._value.get() >= 1
