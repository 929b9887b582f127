"""SMRClient's scheduling and retry logic, with the gRPC call replaced (the real server: test_integration)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from smr.clients.client import SMRClient
from smr.clients.errors import ServerRequestError, ServerUnavailableError
from smr.clients.metrics import ClientMetrics
from smr.clients.results import BatchOutputs
from smr.serving.launcher import free_port


def _client(**kwargs) -> SMRClient:
    return SMRClient(f"127.0.0.1:{free_port()}", **kwargs)  # nothing listens; the calls are replaced


def _outputs(n: int) -> BatchOutputs:
    return BatchOutputs(
        np.zeros((n, 3), np.float32), np.zeros(n, np.int32), np.zeros((n, 1)), np.zeros((n, 1))
    )


def test_requests_in_flight_are_bounded_and_everything_is_yielded_once():
    with _client(max_in_flight=3) as client:
        running, peak, lock = [0], [0], threading.Lock()

        def infer(batch):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.01 * (1 + batch[0] % 3))
            with lock:
                running[0] -= 1
            return _outputs(len(batch))

        client.infer = infer
        pulled = []

        def batches():
            for k in range(20):
                pulled.append(k)
                yield k, np.array([k, k])

        got = dict(client.infer_batches(batches()))
        assert sorted(got) == list(range(20)) and pulled == list(range(20))
        assert peak[0] == 3


def test_a_failed_request_stops_new_ones_but_what_is_in_flight_is_still_yielded():
    with _client(max_in_flight=4) as client:
        sent = []

        def infer(batch):
            sent.append(int(batch[0]))
            if batch[0] == 5:
                raise ServerUnavailableError("gone")
            time.sleep(0.05)
            return _outputs(1)

        client.infer = infer
        yielded = []
        with pytest.raises(ServerUnavailableError, match="gone"):
            for key, _ in client.infer_batches((k, np.array([k])) for k in range(50)):
                yielded.append(key)
        assert 5 not in yielded
        assert sorted(yielded) == sorted(k for k in sent if k != 5)  # every answered request came back
        assert len(sent) < 50  # nothing new was sent after the failure


def test_a_failing_producer_is_raised_after_the_requests_in_flight():
    with _client(max_in_flight=2) as client:
        client.infer = lambda batch: (time.sleep(0.02), _outputs(1))[1]

        def batches():
            yield 0, np.array([0])
            yield 1, np.array([1])
            raise OSError("slide vanished")

        yielded = []
        with pytest.raises(OSError, match="slide vanished"):
            for key, _ in client.infer_batches(batches()):
                yielded.append(key)
        assert sorted(yielded) == [0, 1]


def _unavailable():
    return InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE")


def test_unavailable_is_retried_with_back_off_then_given_up():
    metrics = ClientMetrics()
    with _client(retries=3, backoff=0.01, metrics=metrics) as client:
        calls = []

        def flaky():
            calls.append(time.perf_counter())
            if len(calls) < 3:
                raise _unavailable()
            return "answer"

        assert client._with_retries(lambda _grpc: flaky(), "a test") == "answer"
        assert metrics.retries._value.get() == 2
        for attempt in range(8):  # exponential, capped, with +-25 % jitter
            base = min(client.options.max_backoff, 0.01 * 2**attempt)
            delays = [client.options.backoff_delay(attempt) for _ in range(20)]
            assert all(0.75 * base <= d <= 1.25 * base for d in delays) and len(set(delays)) > 1

        calls.clear()

        def down():
            calls.append(1)
            raise _unavailable()

        with pytest.raises(
            ServerUnavailableError, match=r"is unavailable \(failed to connect\) after 4 attempt"
        ):
            client._with_retries(lambda _grpc: down(), "a test")
        assert len(calls) == 4


def test_errors_that_retrying_cannot_fix_are_raised_at_once():
    metrics = ClientMetrics()
    with _client(retries=5, backoff=0.01, timeout=3, metrics=metrics) as client:
        calls = []

        def bad():
            calls.append(1)
            raise InferenceServerException("unexpected shape", status="StatusCode.INVALID_ARGUMENT")

        with pytest.raises(ServerRequestError, match="refused a test: INVALID_ARGUMENT: unexpected shape"):
            client._with_retries(lambda _grpc: bad(), "a test")
        assert len(calls) == 1

        def slow():
            raise InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")

        with pytest.raises(ServerUnavailableError, match=r"did not answer within 3 s.*--timeout"):
            client._with_retries(lambda _grpc: slow(), "a test")
        errors = {s.labels["status"]: s.value for s in metrics.request_errors.collect()[0].samples
                  if s.name.endswith("_total")}  # fmt: skip
        assert errors == {"INVALID_ARGUMENT": 1.0, "DEADLINE_EXCEEDED": 1.0}


def test_options_are_checked():
    with pytest.raises(ValueError, match="valid: none, gzip, deflate"):
        _client(compression="zstd")
    with pytest.raises(ValueError, match="both private_key and certificate_chain"):
        _client(ssl=True, private_key="key.pem")
    with pytest.raises(ValueError, match="ssl is off"):
        _client(root_certificates="ca.pem")
    with pytest.raises(ValueError, match="max_in_flight"):
        _client(max_in_flight=0)
