"""Client-side Prometheus metrics: cells scored, request latency (also per server), retries, failovers,
failed requests.

The server exports its own metrics (Triton's and SMR's per-class counters); these are the client's
view, which includes the network and queueing. ``smr score-slide --metrics-port PORT`` serves them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["ClientMetrics", "LATENCY_BUCKETS"]

#: Request latencies of whole batches range from milliseconds (GPU) to tens of seconds (CPU, batch 64).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf"))


class ClientMetrics:
    """The SMR client's metrics, in their own registry (so that several clients in a process do not clash)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.cells_scored = Counter(
            "smr_client_cells_scored",
            "Cells classified by the server for this client",
            registry=self.registry,
        )
        self.requests = Counter(
            "smr_client_requests", "Inference requests that succeeded", registry=self.registry
        )
        self.request_latency = Histogram(
            "smr_client_request_latency_seconds",
            "Wall time of one successful inference request (one batch), seen from the client",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "smr_client_retries", "Requests retried after the server was unavailable", registry=self.registry
        )
        self.request_errors = Counter(
            "smr_client_request_errors",
            "Requests that failed (after retries), by gRPC status",
            ["status"],
            registry=self.registry,
        )
        self.endpoint_latency = Histogram(
            "smr_client_endpoint_latency_seconds",
            "Wall time of one successful inference request (one batch), by the server (HOST:PORT) "
            "that answered it",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.endpoint_failures = Counter(
            "smr_client_endpoint_failures",
            "Attempts that failed because a server was unavailable or restarting, by server (HOST:PORT)",
            ["endpoint"],
            registry=self.registry,
        )
        self.failovers = Counter(
            "smr_client_failovers",
            "Requests sent again at once to another server after one failed (several --url endpoints)",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "smr_client_requests_in_flight",
            "Inference requests currently awaiting an answer",
            registry=self.registry,
        )

    def observe_endpoint(self, endpoint: str, seconds: float) -> None:
        """A successful inference request answered by ``endpoint`` in ``seconds``."""
        self.endpoint_latency.labels(endpoint=endpoint).observe(seconds)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose the metrics over HTTP on ``port`` (``/metrics``), in a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
