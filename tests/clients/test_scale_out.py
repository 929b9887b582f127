"""Scale-out on real servers: one client over two `smr serve`s (one killed mid-run), and Ray scoring
of many slides (a worker and a server killed mid-run). Each run must list every detection exactly
once, with the same results as a plain run against one server."""

from __future__ import annotations

import csv
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from smr.clients.client import SMRClient
from smr.clients.journal import JOURNAL_CSV
from smr.clients.metrics import ClientMetrics
from smr.clients.scoring import score_slide
from tests.clients.serve_helpers import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ATOL = 1e-4


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_results(rows: list[dict], reference: list[dict]) -> None:
    """Same detections in the same order, each once, with the reference's answers (floats to ATOL)."""
    assert Counter(r["id"] for r in rows) == Counter(r["id"] for r in reference)
    assert [r["id"] for r in rows] == [r["id"] for r in reference]
    numeric = [k for k in reference[0] if k == "probability" or k.startswith(("position_", "distance_"))]
    for got, want in zip(rows, reference, strict=True):
        assert got["status"] == want["status"], got["id"]
        for key in numeric:
            if want[key] != "":
                assert float(got[key]) == pytest.approx(float(want[key]), abs=ATOL), (got["id"], key)


def _journal_rows(path: Path) -> int:
    return max(0, len(path.read_bytes().splitlines()) - 1) if path.exists() else 0


@pytest.fixture(scope="module")
def servers(clients_repository):
    """Two real `smr serve`s of the same repository (``both_up`` starts again one a test stopped)."""
    pair = [ServeProcess(clients_repository), ServeProcess(clients_repository)]
    try:
        for server in pair:
            server.start()
        yield pair
    finally:
        for server in pair:
            server.stop()


@pytest.fixture()
def both_up(servers):
    for server in servers:
        if not server.alive:  # stopped by an earlier test
            server.start()  # same port as before
    return servers


@pytest.fixture(scope="module")
def single_server_run(servers, synthetic_slide, tmp_path_factory) -> list[dict]:
    """The reference: the slide scored by one server, uninterrupted."""
    out = tmp_path_factory.mktemp("single-server")
    with SMRClient(servers[0].url, batch_size=4, max_in_flight=2) as client:
        score_slide(synthetic_slide.slide, synthetic_slide.detections, out, client,
                    mpp=synthetic_slide.mpp, progress=False)  # fmt: skip
    return _read_csv(out / "cells.csv")


def _samples(metrics: ClientMetrics, family, suffix: str) -> dict[str, float]:
    return {s.labels["endpoint"]: s.value for s in family.collect()[0].samples if s.name.endswith(suffix)}


def test_two_servers_one_killed_mid_run_every_cell_once_as_with_one_server(
    both_up, single_server_run, synthetic_slide, tmp_path
):
    a, b = both_up
    out = tmp_path / "out"
    metrics = ClientMetrics()
    outcome: dict = {}

    def run() -> None:
        try:
            with SMRClient(f"{a.url},{b.url}", batch_size=1, max_in_flight=4, metrics=metrics) as client:
                outcome["score"] = score_slide(synthetic_slide.slide, synthetic_slide.detections, out,
                                               client, mpp=synthetic_slide.mpp, progress=False)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 300
    while _journal_rows(out / JOURNAL_CSV) < 12:
        assert worker.is_alive(), outcome
        assert time.monotonic() < deadline, "nothing journaled"
        time.sleep(0.05)
    answered_before = _samples(metrics, metrics.endpoint_latency, "_count")
    b.kill()  # the second server goes away mid-run, at once (a graceful stop drains while the run ends)
    journaled_at_stop = _journal_rows(out / JOURNAL_CSV)
    worker.join(timeout=600)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    print(f"\nkilled {b.url} after {journaled_at_stop} of {len(synthetic_slide.ids) - 2} cells")
    assert answered_before.get(a.url, 0) >= 1 and answered_before.get(b.url, 0) >= 1  # both served
    assert journaled_at_stop < len(synthetic_slide.ids) - 2  # the stop happened mid-run
    assert _samples(metrics, metrics.endpoint_failures, "_total").get(b.url, 0) >= 1  # and was seen
    answered = _samples(metrics, metrics.endpoint_latency, "_count")
    assert sum(answered.values()) == len(synthetic_slide.ids) - 2  # one answer per batch of one cell
    _assert_same_results(_read_csv(out / "cells.csv"), single_server_run)


# --------------------------------------------------------------------------------------------------
# Ray: score-slides --ray on a local cluster against the two servers


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    import tests.clients.serve_helpers as helpers
    from smr.clients.distributed import WORKER_NICENESS

    ray.cloudpickle.register_pickle_by_value(helpers)  # the workers need not import the tests
    os.environ.setdefault(WORKER_NICENESS, "0")  # as the command's local cluster (not Ray's nice 15)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def slide_folder(synthetic_slide, tmp_path_factory) -> Path:
    """Three slides (one sub-folder each) sharing the synthetic slide, each with a third of its
    detections: every detection's answer is in the single-server run."""
    rows = _read_csv(synthetic_slide.detections)
    src = tmp_path_factory.mktemp("slides")
    for k, name in enumerate(("case-a", "case-b", "case-c")):
        (src / name).mkdir()
        (src / name / "slide.tiff").symlink_to(synthetic_slide.slide)
        with open(src / name / "detections.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows[k::3])
    return src


def _assert_slides_match_the_single_server_run(out: Path, slide_folder: Path, reference: list[dict]):
    by_id = {r["id"]: r for r in reference}
    for folder in sorted(p for p in slide_folder.iterdir() if p.is_dir()):
        ids = [r["id"] for r in _read_csv(folder / "detections.csv")]
        rows = _read_csv(out / folder.name / "cells.csv")
        _assert_same_results(rows, [by_id[i] for i in ids])  # every detection exactly once


def test_ray_scores_every_slide_once_with_a_worker_killed_mid_slide(
    ray_cluster, both_up, slide_folder, single_server_run, synthetic_slide, tmp_path
):
    from smr.clients.batch import find_jobs
    from smr.clients.distributed import run_jobs_on_ray
    from tests.clients.serve_helpers import CrashOnceClient

    a, b = both_up
    jobs, _ = find_jobs(slide_folder)
    marker = tmp_path / "worker-killed"
    factory = CrashOnceClient(
        f"{a.url},{b.url}", marker, after=3, kwargs={"batch_size": 2, "max_in_flight": 2}
    )
    finished = []
    outcomes = run_jobs_on_ray(jobs, tmp_path / "out", factory, {"mpp": synthetic_slide.mpp},
                               on_done=lambda o: finished.append(o.job.name))  # fmt: skip
    assert marker.exists(), "no worker was killed"
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert sorted(finished) == sorted(j.name for j in jobs)  # progress saw every slide once
    resumed = [o.score.resumed for o in outcomes]
    assert sum(r > 0 for r in resumed) == 1, resumed  # the killed slide's retry went on from its journal
    _assert_slides_match_the_single_server_run(tmp_path / "out", slide_folder, single_server_run)
    assert not list((tmp_path / "out").glob("*/.smr-ray-attempt-*"))


def test_score_slides_ray_with_a_server_killed_mid_run(
    ray_cluster, both_up, slide_folder, single_server_run, synthetic_slide, tmp_path, capsys
):
    from smr.cli import main as smr_main

    a, b = both_up
    out = tmp_path / "out"
    argv = ["score-slides", str(slide_folder), "--out", str(out), "--url", f"{a.url},{b.url}",
            "--mpp", str(synthetic_slide.mpp), "--batch-size", "2", "--max-in-flight", "2", "--ray",
            "--no-progress"]  # fmt: skip
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("code", smr_main(argv)))
    worker.start()
    total = sum(len(_read_csv(p)) for p in slide_folder.glob("*/detections.csv"))
    deadline = time.monotonic() + 300
    while (journaled := sum(_journal_rows(p) for p in out.glob(f"*/{JOURNAL_CSV}"))) < 8:
        assert worker.is_alive(), capsys.readouterr().err
        assert time.monotonic() < deadline, "nothing journaled"
        time.sleep(0.05)
    b.kill()  # the second server dies mid-run, with its tritonserver
    worker.join(timeout=600)
    print(f"\nkilled {b.url} with {journaled} of {total} detections journaled")
    assert journaled < total
    assert result.get("code") == 0, capsys.readouterr().err
    summary = _read_csv(out / "summary.csv")
    assert sorted(r["name"] for r in summary) == ["case-a", "case-b", "case-c"]
    assert all(r["status"] == "ok" for r in summary)
    page = (out / "summary.html").read_text(encoding="utf-8")
    assert all(f'href="{name}/report.html"' in page for name in ("case-a", "case-b", "case-c"))
    _assert_slides_match_the_single_server_run(out, slide_folder, single_server_run)
