"""`smr serve`'s supervisor on a real export: a killed python stub under load is replaced within
seconds, on the same ports, with its shared memory removed; /ready is a real inference; restarts
are counted in the supervisor's metrics."""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import numpy as np
import pytest
from serving_helpers import SMR, PrometheusProcess, metric_samples, prometheus_config, scrape

from smr.serving import shm
from smr.serving.launcher import TritonProcess
from smr.serving.supervisor import Supervisor

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECOVERY_LIMIT = 30.0  # seconds from the kill until a valid request succeeds again


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)


def _infer(client, images: np.ndarray, timeout: float = 120) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    inputs = [grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")]
    inputs[0].set_data_from_numpy(images)
    outputs = [grpcclient.InferRequestedOutput(name) for name in ("PROBABILITIES", "MATURITY")]
    result = client.infer("smr", inputs, outputs=outputs, client_timeout=timeout)
    return {name: result.as_numpy(name) for name in ("PROBABILITIES", "MATURITY")}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def supervised(exported_repository):
    server = TritonProcess(exported_repository, ready_timeout=300)
    with Supervisor(server, probe_interval=5.0, health_port=0) as supervisor:
        yield supervisor


@pytest.fixture(scope="module")
def prometheus(supervised, tmp_path_factory):
    """A real Prometheus with SMR's rules, scraping the supervisor from before the restarts."""
    target = supervised.health_url.split("//", 1)[1]
    server = PrometheusProcess(
        prometheus_config([supervised.server.metrics_url.split("//", 1)[1].split("/", 1)[0]],
                          supervisor_targets=[target]),
        tmp_path_factory.mktemp("prom"),
    )  # fmt: skip
    server.wait_for('smr_serve_up{job="smr_serve"}', lambda r: len(r) == 1, timeout=60)
    yield server
    server.stop()


def test_ready_is_a_real_inference_and_metrics_are_exposed(supervised, prometheus):
    code, body = _get(supervised.health_url + "/ready")
    assert code == 200, body
    doc = json.loads(body)
    assert doc["ready"] is True and "probe inference on 'smr'" in doc["detail"]
    assert _get(supervised.health_url + "/live")[0] == 200
    text = scrape(supervised.health_url + "/metrics")
    assert metric_samples(text, "smr_serve_up") == {(): 1.0}
    assert set(metric_samples(text, "smr_serve_restarts_total")) == {
        (("reason", r),) for r in ("server_exited", "stub_died", "probe_failed")
    }


@pytest.mark.parametrize("stub", ["smr_backbone", "smr_postprocess"])
def test_a_stub_killed_under_load_is_replaced_and_requests_succeed_again(
    supervised, stub, offline_pipeline, exported_repository
):
    import tritonclient.grpc as grpcclient

    server = supervised.server
    ports, prefix, restarts = dict(server.ports), server.shm_prefix, supervised.restart_count
    files_before = {p: p.read_bytes() for p in exported_repository.rglob("*") if p.is_file()}
    events: list[tuple[float, str | None]] = []  # (time, error or None) of the load's requests
    stop = threading.Event()

    def load(seed: int) -> None:
        images = _images(2, seed)
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            while not stop.is_set():
                try:
                    _infer(client, images)
                    events.append((time.monotonic(), None))
                except Exception as exc:  # recorded; the load goes on like a retrying client
                    events.append((time.monotonic(), str(exc)))
                    time.sleep(0.2)

    threads = [threading.Thread(target=load, args=(seed,), daemon=True) for seed in range(2)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 300
        while sum(error is None for _, error in events) < 3:
            assert time.monotonic() < deadline, f"the load never got going: {events[-3:]}"
            time.sleep(0.2)
        (pid,) = [pid for pid, name in server.stub_processes().items() if name.startswith(stub + "_")]
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        images = _images(3, seed=99)
        expected = offline_pipeline(images)
        last_error = None
        while True:  # a valid request, from a new client, until it succeeds
            try:
                with grpcclient.InferenceServerClient(server.grpc_url) as client:
                    served = _infer(
                        client, images, timeout=max(RECOVERY_LIMIT - (time.monotonic() - killed), 1)
                    )
                break
            except Exception as exc:  # noqa: BLE001 - the restart window
                last_error = exc
            assert time.monotonic() - killed < RECOVERY_LIMIT, f"no valid answer; last error: {last_error}"
            time.sleep(0.25)
        recovered = time.monotonic() - killed
        assert recovered < RECOVERY_LIMIT, f"answered only after {recovered:.1f} s"
        np.testing.assert_allclose(served["PROBABILITIES"], expected["PROBABILITIES"], atol=1e-5)
        np.testing.assert_allclose(served["MATURITY"], expected["MATURITY"], atol=1e-5)
        time.sleep(2)  # the load resumes
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    print(f"\n{stub} stub killed: a valid request succeeded again after {recovered:.1f} s")

    assert supervised.restart_count == restarts + 1
    assert server.ports == ports  # clients keep their address
    text = scrape(supervised.health_url + "/metrics")
    assert metric_samples(text, "smr_serve_restarts_total")[(("reason", "stub_died"),)] >= 1
    assert not shm.regions(prefix)  # the broken server's regions are gone ...
    regions = shm.regions(server.shm_prefix)
    assert len(regions) == 2 and all(
        stat.S_IMODE(p.stat().st_mode) == 0o600 for p in regions
    )  # ... new: private
    errors = [(t - killed, e) for t, e in events if e is not None]
    assert all(-0.5 <= t <= recovered + 2.0 for t, _ in errors), errors  # errors only while restarting
    assert any(e is None and t > killed + recovered for t, e in events), "the load did not resume"
    files_after = {p: p.read_bytes() for p in exported_repository.rglob("*") if p.is_file()}
    assert files_after == files_before  # serving and restarting wrote nothing into the repository


@pytest.mark.parametrize("stub", ["smr_backbone", "smr_postprocess"])
def test_score_slide_rides_through_a_stub_kill_with_every_detection_exactly_once(supervised, stub, tmp_path):
    """score-slide is running when a stub dies: its requests fail (INTERNAL "Stub process ... is not
    healthy", then UNAVAILABLE while the server restarts) and are retried within the client's retry
    budget, so the one run ends normally with every detection in cells.csv exactly once."""
    from smr.clients.journal import JOURNAL_CSV
    from smr.synth.render import FIELD_UM
    from smr.synth.slide import SlideSettings, write_slide

    write_slide(tmp_path / "case", SlideSettings(cells=32, seed=5))
    with open(tmp_path / "case" / "detections.csv", encoding="utf-8", newline="") as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    out = tmp_path / "out"
    server, restarts = supervised.server, supervised.restart_count
    cmd = [SMR, "score-slide", str(tmp_path / "case" / "slide.tiff"), "--detections",
           str(tmp_path / "case" / "detections.csv"), "--out", str(out), "--url", server.grpc_url,
           "--mpp", str(FIELD_UM / 224), "--batch-size", "2", "--max-in-flight", "2",
           "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        journal = out / JOURNAL_CSV
        while not journal.exists() or len(journal.read_bytes().splitlines()) < 1 + 6:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "score-slide journaled nothing"
            time.sleep(0.1)
        (pid,) = [pid for pid, name in server.stub_processes().items() if name.startswith(stub + "_")]
        os.kill(pid, signal.SIGKILL)
        journaled = len(journal.read_bytes().splitlines()) - 1
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    print(f"\nscore-slide through a {stub} stub kill: {journaled} of {len(ids)} cells journaled at the kill")
    assert journaled < len(ids), "the slide was scored before the kill; nothing was tested"
    assert proc.returncode == 0, stderr  # retried through the restart: no second run needed
    assert supervised.restart_count == restarts + 1
    assert "report:" in stdout
    with open(out / "cells.csv", encoding="utf-8", newline="") as f:
        assert Counter(row["id"] for row in csv.DictReader(f)) == Counter(ids)  # each exactly once


def test_prometheus_counts_the_restarts_and_raises_the_alert(supervised, prometheus):
    """After the two stub kills above: Prometheus read the counter and SMRServerRestarted fires."""
    assert supervised.restart_count >= 2
    result = prometheus.wait_for(
        'smr_serve_restarts_total{reason="stub_died"}',
        lambda r: (
            r and float(r[0]["value"][1]) == supervised.restarts.labels(reason="stub_died")._value.get()
        ),
    )
    assert result[0]["metric"]["job"] == "smr_serve"
    alerts = prometheus.wait_for(
        'ALERTS{alertname="SMRServerRestarted", alertstate="firing"}', lambda r: len(r) == 1
    )
    assert alerts[0]["metric"]["reason"] == "stub_died" and alerts[0]["metric"]["severity"] == "warning"
    assert prometheus.query('ALERTS{alertname="SMRServerUnhealthy"}') == []
