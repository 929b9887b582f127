"""A real Prometheus scraping the real server: latency and per-class counts read back via its HTTP API."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import yaml
from serving_helpers import (
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    PrometheusProcess,
    exposed_metric_names,
    metric_samples,
    prometheus_config,
    scrape,
)
from test_monitoring_config import dashboard_exprs, promql_metric_names, recorded_names

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def prometheus(smr_server, tmp_path_factory):
    target = smr_server.metrics_url.split("//", 1)[1].split("/", 1)[0]
    server = PrometheusProcess(
        prometheus_config([target], scrape_interval="1s"), tmp_path_factory.mktemp("prom")
    )
    yield server
    server.stop()


def _traffic(smr_server, requests: int = 6) -> list[float]:
    """Send a few small requests; return the client-side latencies in seconds."""
    import tritonclient.grpc as grpcclient

    latencies = []
    with grpcclient.InferenceServerClient(smr_server.grpc_url) as client:
        for k in range(requests):
            images = np.random.default_rng(500 + k).integers(
                0, 256, size=(1 + k % 3, 224, 224, 3), dtype=np.uint8
            )
            inputs = [grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")]
            inputs[0].set_data_from_numpy(images)
            start = time.perf_counter()
            client.infer("smr", inputs, outputs=[grpcclient.InferRequestedOutput("CLASS_ID")])
            latencies.append(time.perf_counter() - start)
    return latencies


def _by_label(result: list[dict], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


def _settled(prometheus, smr_server, names: list[str]) -> dict[str, dict[str, float]]:
    """Wait until Prometheus holds the server's current values of ``names``; return them by model/class."""
    direct = scrape(smr_server.metrics_url)
    values = {}
    for name in names:
        label = "class" if name.startswith("smr_cells") else "model"
        want = {dict(k)[label]: v for k, v in metric_samples(direct, name).items()}
        result = prometheus.wait_for(name, lambda r, want=want, label=label: _by_label(r, label) == want)
        values[name] = _by_label(result, label)
    return values


def test_prometheus_reads_latency_and_cells_per_class(smr_server, prometheus):
    prometheus.wait_for('up{job="triton"}', lambda r: r and r[0]["value"][1] == "1")
    counters = [
        "smr_cells_classified_total",
        "nv_inference_request_success",
        "nv_inference_request_duration_us",
    ]
    time.sleep(1.5)  # let Triton finish counting earlier requests
    before = _settled(prometheus, smr_server, counters)
    latencies = _traffic(smr_server)
    time.sleep(1.5)
    after = _settled(prometheus, smr_server, counters)

    # per-class counts through Prometheus: this traffic's cells, each counted under its class
    cells = {c: after["smr_cells_classified_total"][c] - before["smr_cells_classified_total"].get(c, 0.0)
             for c in after["smr_cells_classified_total"]}  # fmt: skip
    assert sum(cells.values()) == sum(1 + k % 3 for k in range(len(latencies)))

    # latency through Prometheus: the server-side mean of these requests, at most the client's round trip
    requests = after["nv_inference_request_success"]["smr"] - before["nv_inference_request_success"]["smr"]
    assert requests == len(latencies)
    duration = (
        after["nv_inference_request_duration_us"]["smr"] - before["nv_inference_request_duration_us"]["smr"]
    )
    mean = duration / requests / 1e6
    assert 0 < mean <= max(latencies)

    # the recording rules: quantiles ordered, rate and batch size see the traffic
    quantiles = [
        float(prometheus.wait_for(f'model:request_latency_seconds:{q}{{model="smr"}}', len)[0]["value"][1])
        for q in ("p50", "p95", "p99")
    ]
    assert 0 < quantiles[0] <= quantiles[1] <= quantiles[2]
    prometheus.wait_for(
        'model:inference_rate:rate1m{model="smr_backbone"}', lambda r: r and float(r[0]["value"][1]) > 0
    )
    batch = prometheus.wait_for('model:batch_size:avg1m{model="smr_backbone"}', len)
    assert float(batch[0]["value"][1]) >= 1


def test_rules_load_without_errors(prometheus):
    with __import__("urllib.request").request.urlopen(
        f"{prometheus.url}/api/v1/rules", timeout=10
    ) as response:
        groups = json.loads(response.read())["data"]["groups"]
    names = {rule["name"] for group in groups for rule in group["rules"]}
    doc = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    expected = {rule.get("record") or rule["alert"] for group in doc["groups"] for rule in group["rules"]}
    assert names == expected
    unhealthy = [
        (r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r.get("health") == "err"
    ]
    assert not unhealthy


def test_every_metric_the_rules_and_dashboard_read_is_exposed(smr_server, prometheus):
    """Names that are neither recording rules nor Triton/SMR metrics of the real server would show nothing."""
    _traffic(smr_server, requests=2)
    from prometheus_client import generate_latest

    from smr.serving.supervisor import Supervisor

    # Triton's metrics, and those of `smr serve`'s supervisor (its registry exists unstarted)
    supervisor_text = generate_latest(Supervisor(smr_server).registry).decode()
    exposed = (
        exposed_metric_names(scrape(smr_server.metrics_url)) | exposed_metric_names(supervisor_text) | {"up"}
    )
    recorded = recorded_names()
    doc = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    exprs = [rule["expr"] for group in doc["groups"] for rule in group["rules"]]
    exprs += dashboard_exprs(json.loads((GRAFANA_DIR / "dashboards" / "smr.json").read_text()))
    missing = set()
    for expr in exprs:
        for name in promql_metric_names(re.sub(r"\$\w+", "x", expr)):
            if name not in recorded and name not in exposed:
                missing.add(name)
    assert not missing, f"read by rules or dashboard but not exposed by the server: {sorted(missing)}"
