"""The clients against a real tritonserver serving a real export: classify, score-slide, resume, failures."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import shapely.geometry
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from smr.cli import main as smr_main
from smr.clients.aio import AsyncSMRClient
from smr.clients.client import SMRClient
from smr.clients.defaults import DEFAULT_FLAGGED, DEFAULT_MARGIN, DEFAULT_PER_CLASS
from smr.clients.detections import read_detections
from smr.clients.errors import InputError
from smr.clients.journal import JOURNAL_CSV
from smr.clients.metrics import ClientMetrics
from smr.clients.patches import crop_patch, patch_geometry
from smr.clients.results import BatchOutputs, cells_from_outputs
from smr.clients.scoring import ScoringInterrupted, score_slide
from smr.clients.slides import open_slide
from smr.serving.launcher import TritonProcess, free_port
from tests.clients.conftest import OUTSIDE_IDS
from tests.clients.helpers import chromium_screenshot, screenshot_stats

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMR = str(Path(sys.executable).parent / "smr")
ATOL = 1e-4


def _slide_patches(synthetic_slide, n: int, size: int = 224) -> list[np.ndarray]:
    dets = [d for d in read_detections(synthetic_slide.detections) if d.id not in OUTSIDE_IDS][:n]
    with open_slide(synthetic_slide.slide) as slide:
        geom = patch_geometry(slide, size, mpp=synthetic_slide.mpp)
        return [crop_patch(slide, d, geom) for d in dets]


def _assert_matches_offline(info, cells, ref, *, margin):
    probs = np.array([[c.probabilities[k] for k in info.classes] for c in cells])
    np.testing.assert_allclose(probs, ref["PROBABILITIES"], atol=ATOL)
    maturity = np.array([[p.position for p in c.lineages] for c in cells])
    distance = np.array([[p.distance for p in c.lineages] for c in cells])
    np.testing.assert_allclose(maturity, ref["MATURITY"], atol=ATOL)
    np.testing.assert_allclose(distance, ref["CURVE_DISTANCE"], atol=ATOL, rtol=1e-5)
    expected = cells_from_outputs(
        info,
        BatchOutputs(
            ref["PROBABILITIES"], ref["CLASS_ID"].reshape(-1), ref["MATURITY"], ref["CURVE_DISTANCE"]
        ),
        margin=margin,
    )
    top2 = np.sort(ref["PROBABILITIES"], axis=1)[:, -2:]
    for i, (got, want) in enumerate(zip(cells, expected, strict=True)):
        if top2[i, 1] - top2[i, 0] > 10 * ATOL:  # a near-tie may flip either way
            assert got.class_name == want.class_name, i
            assert got.stage_estimate == want.stage_estimate, i
            assert got.borderline == want.borderline, i


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _metric(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not exposed")


# --------------------------------------------------------------------------------------------------
# classify


def test_classify_agrees_with_the_offline_pipeline(clients_server, offline, synthetic_slide):
    images = _slide_patches(synthetic_slide, 19)
    ref = offline(np.stack(images))
    with SMRClient(clients_server.grpc_url, batch_size=4, max_in_flight=3, embeddings=True) as client:
        info = client.info
        assert info.image_size == 224 and client.batch_size == 4
        cells = client.classify(images)
        assert len(cells) == 19
        _assert_matches_offline(info, cells, ref, margin=client.margin)
        np.testing.assert_allclose(np.stack([c.embedding for c in cells]), ref["EMBEDDING"], atol=ATOL)

        # wrong sizes: refused before anything is sent, or resized like PIL does
        odd = [np.asarray(Image.fromarray(im).resize((150, 150))) for im in images[:5]]
        with pytest.raises(InputError, match=r"image 2: size 150x150 but the server expects 224x224"):
            client.classify(images[:2] + odd)
        assert client.is_ready()
    with SMRClient(clients_server.grpc_url, resize=True) as client:
        resized = np.stack(
            [np.asarray(Image.fromarray(im).resize((224, 224), Image.Resampling.BILINEAR)) for im in odd]
        )
        _assert_matches_offline(info, client.classify(odd), offline(resized), margin=client.margin)


def test_async_client_agrees_with_the_offline_pipeline(clients_server, offline, synthetic_slide):
    images = _slide_patches(synthetic_slide, 11)

    async def go():
        async with AsyncSMRClient(clients_server.grpc_url, batch_size=3, max_in_flight=2) as client:
            return await client.get_info(), await client.classify(images)

    info, cells = asyncio.run(go())
    _assert_matches_offline(info, cells, offline(np.stack(images)), margin=DEFAULT_MARGIN)


def test_classify_command_prints_a_table_and_writes_csv_and_json(
    clients_server, synthetic_slide, tmp_path, capsys
):
    images = _slide_patches(synthetic_slide, 5)
    folder = tmp_path / "patches" / "nested"
    folder.mkdir(parents=True)
    files = []
    for i, im in enumerate(images):
        files.append(folder / f"cell-{i}.png")
        Image.fromarray(im).save(files[-1])
    with SMRClient(clients_server.grpc_url) as client:
        expected = client.classify(images)
    rc = smr_main(["classify", str(tmp_path / "patches"), "--url", clients_server.grpc_url, "--out",
                   str(tmp_path / "out.csv")])  # fmt: skip
    assert rc == 0
    table = capsys.readouterr().out
    rows = _read_csv(tmp_path / "out.csv")
    assert [r["file"] for r in rows] == [str(f) for f in files]
    for f, row, cell in zip(files, rows, expected, strict=True):
        assert f.name in table
        assert row["class"] == cell.class_name
        assert float(row["probability"]) == pytest.approx(cell.probability, abs=1e-5)
    argv = ["classify", *map(str, files), "--url", clients_server.grpc_url, "--quiet", "--embeddings"]
    assert smr_main([*argv, "--out", str(tmp_path / "out.json")]) == 0
    doc = json.loads((tmp_path / "out.json").read_text())
    assert [d["class"] for d in doc] == [c.class_name for c in expected]
    assert all(len(d["embedding"]) == 256 for d in doc)
    # the wrong size is refused with a hint, nothing written
    Image.fromarray(images[0][:100, :120]).save(tmp_path / "small.png")
    assert smr_main(["classify", str(tmp_path / "small.png"), "--url", clients_server.grpc_url]) == 2
    assert "pass --resize" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# score-slide


@pytest.fixture(scope="module")
def reference_run(clients_server, synthetic_slide, tmp_path_factory):
    """An uninterrupted in-process run, with client metrics on a free port."""
    metrics = ClientMetrics()
    port = free_port()
    metrics.serve(port, addr="127.0.0.1")
    out = tmp_path_factory.mktemp("reference-run")
    with SMRClient(clients_server.grpc_url, batch_size=8, max_in_flight=2, metrics=metrics) as client:
        score = score_slide(
            synthetic_slide.slide,
            synthetic_slide.detections,
            out,
            client,
            mpp=synthetic_slide.mpp,
            progress=False,
        )
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return score, out, text


def test_score_slide_writes_every_detection_once_and_agrees_with_offline(
    reference_run, offline, synthetic_slide
):
    score, out, _ = reference_run
    rows = _read_csv(out / "cells.csv")
    assert [r["id"] for r in rows] == synthetic_slide.ids  # each detection exactly once, in file order
    outside = [r["id"] for r in rows if r["status"] == "outside"]
    assert outside == list(OUTSIDE_IDS) and score.outside_ids == list(OUTSIDE_IDS)
    scored = [r for r in rows if r["status"] == "scored"]
    assert len(scored) == score.scored == len(synthetic_slide.ids) - 2
    assert all(r["class"] for r in scored) and not any(r["class"] for r in rows if r["status"] == "outside")

    # the rows are the model's answers for the patches around the detections
    dets = {d.id: d for d in read_detections(synthetic_slide.detections)}
    sample = scored[::7]
    with open_slide(synthetic_slide.slide) as slide:
        geom = patch_geometry(slide, 224, mpp=synthetic_slide.mpp)
        ref = offline(np.stack([crop_patch(slide, dets[r["id"]], geom) for r in sample]))
    for i, r in enumerate(sample):
        assert float(r["probability"]) == pytest.approx(float(ref["PROBABILITIES"][i].max()), abs=ATOL)
        assert r["class"] == score.info.classes[int(ref["CLASS_ID"][i, 0])]
        lineages = [k[len("position_") :] for k in r if k.startswith("position_")]
        for j, lin in enumerate(lineages):
            assert float(r[f"position_{lin}"]) == pytest.approx(float(ref["MATURITY"][i, j]), abs=ATOL)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"]["counts"] == {**dict.fromkeys(summary["count"]["counts"], 0),
                                          **Counter(r["class"] for r in scored)}  # fmt: skip
    assert summary["outside_ids"] == list(OUTSIDE_IDS)


def test_score_slide_checks_the_review_flags_against_true_classes(clients_server, synthetic_slide, tmp_path):
    """Labels that are served classes give a reference count and the review check, in summary.json."""
    with SMRClient(clients_server.grpc_url) as client:
        classes = client.info.classes
        with synthetic_slide.detections.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        for i, r in enumerate(rows):
            r["class"] = classes[i % len(classes)]
        labelled = tmp_path / "labelled.csv"
        with labelled.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        out = tmp_path / "out"
        mpp = synthetic_slide.mpp
        score = score_slide(synthetic_slide.slide, labelled, out, client, mpp=mpp, progress=False)
    scored = [r for r in _read_csv(out / "cells.csv") if r["status"] == "scored"]
    wrong = [r["class"] != r["reference_class"] for r in scored]
    flagged = [r["borderline"] == "true" for r in scored]
    check = json.loads((out / "summary.json").read_text())["review_check"]
    assert (check["cells"], check["flagged"]) == (len(scored), sum(flagged))
    assert check["misclassified"] == sum(wrong) > 0
    assert check["misclassified_flagged"] == sum(w and f for w, f in zip(wrong, flagged, strict=True))
    assert score.review is not None and score.review.to_dict() == check
    assert score.reference is not None and score.reference.total == len(scored)


def test_score_slide_geojson_round_trips_with_the_right_properties(reference_run):
    _, out, _ = reference_run
    rows = {r["id"]: r for r in _read_csv(out / "cells.csv") if r["status"] == "scored"}
    doc = json.loads((out / "cells.geojson").read_text())
    assert doc["type"] == "FeatureCollection"
    assert sorted(f["properties"]["name"] for f in doc["features"]) == sorted(rows)
    assert len({f["id"] for f in doc["features"]}) == len(rows)
    for feature in doc["features"]:
        row = rows[feature["properties"]["name"]]
        geom = shapely.geometry.shape(feature["geometry"])
        assert geom.is_valid and geom.geom_type == "Point"
        assert (geom.x, geom.y) == pytest.approx((float(row["x"]), float(row["y"])))
        props = feature["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"]["name"] == row["class"]
        assert len(props["classification"]["color"]) == 3
        assert props["measurements"]["SMR probability"] == pytest.approx(float(row["probability"]), rel=1e-5)
        assert props["measurements"]["SMR borderline"] == (1.0 if row["borderline"] == "true" else 0.0)
        assert props["smr"]["stage_estimate"] == (row["stage_estimate"] or None)


def test_score_slide_report_renders_with_table_and_plots(reference_run, tmp_path):
    score, out, _ = reference_run
    html = (out / "report.html").read_text()
    assert "id=differential-count" in html and "id=maturation-index" in html
    rows = [r for r in _read_csv(out / "cells.csv") if r["status"] == "scored"]
    lineages_with_cells = {r["lineage"] for r in rows if r["lineage"]}
    per_class = Counter(r["class"] for r in rows)
    gallery = sum(min(DEFAULT_PER_CLASS, n) for n in per_class.values())
    gallery += min(DEFAULT_FLAGGED, sum(r["borderline"] == "true" for r in rows))
    # the count plot, a position plot per lineage with cells, a gallery per class, the flagged cells
    assert html.count("data:image/png;base64,") == 1 + len(lineages_with_cells) + gallery
    for lineage in lineages_with_cells:
        assert f"id='positions-{lineage}'" in html
    assert "id=low-count-warning" in html  # fewer than 500 cells
    assert all(i in html for i in OUTSIDE_IDS)
    png = tmp_path / "report.png"
    chromium_screenshot(out / "report.html", png, width=1200, height=2200)
    stats = screenshot_stats(png)
    assert stats["non_white"] > 0.03 and stats["distinct"] > 100  # text, tables and a plot: not blank
    assert stats["colourful"] > 0.002  # the count plot's bars (an untrained model may predict one class)


def test_client_metrics_count_cells_requests_and_latency(reference_run):
    score, _, text = reference_run
    assert _metric(text, "smr_client_cells_scored_total") == score.scored
    requests = math.ceil(score.scored / 8)
    assert _metric(text, "smr_client_requests_total") == requests
    assert _metric(text, "smr_client_request_latency_seconds_count") == requests
    assert _metric(text, "smr_client_request_latency_seconds_sum") > 0
    assert _metric(text, "smr_client_retries_total") == 0


def test_a_finished_run_is_not_scored_again(reference_run, clients_server, synthetic_slide):
    score, out, _ = reference_run
    before = (out / "cells.csv").read_bytes()
    metrics = ClientMetrics()
    with SMRClient(clients_server.grpc_url, batch_size=8, metrics=metrics) as client:
        again = score_slide(
            synthetic_slide.slide,
            synthetic_slide.detections,
            out,
            client,
            mpp=synthetic_slide.mpp,
            progress=False,
        )
    assert again.resumed == score.scored and metrics.cells_scored._value.get() == 0
    assert (out / "cells.csv").read_bytes() == before


def _same_results(rows_a, rows_b):
    assert [r["id"] for r in rows_a] == [r["id"] for r in rows_b]
    for a, b in zip(rows_a, rows_b, strict=True):
        assert a["status"] == b["status"]
        if a["status"] == "scored":
            assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=ATOL)
            pos_keys = [k for k in a if k.startswith("position_")]
            for k in pos_keys:
                assert float(a[k]) == pytest.approx(float(b[k]), abs=ATOL)


def _wait_for_journal_rows(path: Path, n: int, process_alive, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = max(0, len(path.read_bytes().splitlines()) - 1) if path.exists() else 0
        if rows >= n:
            return rows
        if not process_alive():
            pytest.fail(f"scoring ended before {n} cells were journaled ({rows})")
        time.sleep(0.05)
    pytest.fail(f"fewer than {n} cells journaled after {timeout} s")


def test_killed_half_way_and_restarted_every_detection_appears_once(
    clients_server, synthetic_slide, reference_run, tmp_path
):
    out = tmp_path / "out"
    port = free_port()
    cmd = [SMR, "score-slide", str(synthetic_slide.slide), "--detections", str(synthetic_slide.detections),
           "--out", str(out), "--url", clients_server.grpc_url, "--mpp", str(synthetic_slide.mpp),
           "--batch-size", "4", "--max-in-flight", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        [*cmd, "--metrics-port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        journaled = _wait_for_journal_rows(out / JOURNAL_CSV, 24, lambda: proc.poll() is None)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert _metric(text, "smr_client_cells_scored_total") >= journaled  # --metrics-port serves them
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "cells.csv").exists()  # no partial outputs
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "report:" in done.stdout
    rows = _read_csv(out / "cells.csv")
    assert Counter(r["id"] for r in rows) == Counter(synthetic_slide.ids)
    _same_results(rows, _read_csv(reference_run[1] / "cells.csv"))


def test_server_stopped_mid_run_gives_a_clear_error_and_a_resumable_state(
    clients_repository, synthetic_slide, reference_run, tmp_path
):
    out = tmp_path / "out"
    server = TritonProcess(clients_repository, ready_timeout=300).start()
    port = server.ports["grpc"]
    outcome: dict = {}

    def run(client):
        try:
            outcome["score"] = score_slide(synthetic_slide.slide, synthetic_slide.detections, out, client,
                                           mpp=synthetic_slide.mpp, progress=False)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    try:
        client = SMRClient(server.grpc_url, batch_size=4, max_in_flight=1, retries=1, backoff=0.1)
        worker = threading.Thread(target=run, args=(client,))
        worker.start()
        _wait_for_journal_rows(out / JOURNAL_CSV, 12, worker.is_alive)
        server.send_signal(signal.SIGKILL)  # the server dies, as on a crash or a node loss
        worker.join(timeout=120)
    finally:
        server.stop()
    error = outcome.get("error")
    assert isinstance(error, ScoringInterrupted), outcome
    assert f"127.0.0.1:{port}" in str(error) and "run the same command again" in str(error)
    assert 12 <= error.scored < len(synthetic_slide.ids) - 2
    assert not (out / "cells.csv").exists() and not (out / "report.html").exists()
    kept = _read_csv(out / JOURNAL_CSV)
    assert len(kept) == error.scored and len({r["id"] for r in kept}) == len(kept)

    # start scoring again while the server is still down: the client retries with back-off until it is up
    metrics = ClientMetrics()
    client = SMRClient(f"127.0.0.1:{port}", batch_size=4, max_in_flight=2, retry_budget=600, metrics=metrics)
    outcome.clear()
    worker = threading.Thread(target=run, args=(client,))
    worker.start()
    time.sleep(1.0)
    with TritonProcess(clients_repository, grpc_port=port, ready_timeout=300):
        worker.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert metrics.retries._value.get() >= 1
    assert outcome["score"].resumed == error.scored
    rows = _read_csv(out / "cells.csv")
    assert Counter(r["id"] for r in rows) == Counter(synthetic_slide.ids)
    _same_results(rows, _read_csv(reference_run[1] / "cells.csv"))


# --------------------------------------------------------------------------------------------------
# score-slides


def test_score_slides_scores_each_slide_and_summarises(clients_server, synthetic_slide, tmp_path, capsys):
    src = tmp_path / "slides"
    for name, keep in (("case-a", 20), ("case-b", 10)):
        (src / name).mkdir(parents=True)
        (src / name / "slide.tiff").symlink_to(synthetic_slide.slide)
        lines = (synthetic_slide.folder / "detections.csv").read_text().splitlines()
        (src / name / "detections.csv").write_text("\n".join(lines[: keep + 1]) + "\n")
    (src / "case-a" / "thumbnail.png").symlink_to(synthetic_slide.folder / "thumbnail.png")
    (src / "case-c").mkdir()
    (src / "case-c" / "slide.tiff").symlink_to(synthetic_slide.slide)  # no detections: skipped
    out = tmp_path / "out"
    rc = smr_main(["score-slides", str(src), "--out", str(out), "--url", clients_server.grpc_url,
                   "--parallel", "2", "--mpp", str(synthetic_slide.mpp), "--no-progress",
                   "--batch-size", "8"])  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    assert "case-c" in captured.err and "no detections" in captured.err
    rows = {r["name"]: r for r in _read_csv(out / "summary.csv")}
    assert sorted(rows) == ["case-a", "case-b"]
    assert all(r["status"] == "ok" for r in rows.values())
    assert int(rows["case-a"]["cells"]) == 20 and int(rows["case-b"]["cells"]) == 10
    for name in rows:
        cells = _read_csv(out / name / "cells.csv")
        assert int(rows[name]["cells"]) == len(cells)
        pct = 100 * Counter(r["class"] for r in cells)[cells[0]["class"]] / len(cells)
        assert float(rows[name][f"pct_{cells[0]['class']}"]) == pytest.approx(pct, abs=0.01)


# --------------------------------------------------------------------------------------------------
# scale, provenance and damaged images (issue 12)


def _model_scale_from_the_training_images() -> float:
    """The scale the fixture's run was trained at, from its data set alone: the declared pixel size
    times the median image side (geometric mean), over the 224 px network input."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
    from export_helpers import PBC_MICRONS_PER_PIXEL, shared_pbc_dev

    sizes = []
    for path in sorted(shared_pbc_dev().glob("*/*.jpg")):
        with Image.open(path) as im:
            sizes.append((im.height, im.width))
    h, w = np.median(np.array(sizes, dtype=float), axis=0)
    return PBC_MICRONS_PER_PIXEL * math.sqrt(h * w) / 224


def test_score_slide_without_mpp_uses_the_model_s_scale_and_counts_the_same(
    clients_server, synthetic_slide, tmp_path, capsys
):
    mpp = _model_scale_from_the_training_images()
    common = [str(synthetic_slide.slide), "--detections", str(synthetic_slide.detections), "--url",
              clients_server.grpc_url, "--no-progress"]  # fmt: skip
    assert smr_main(["score-slide", *common, "--out", str(tmp_path / "given"), "--mpp", repr(mpp)]) == 0
    capsys.readouterr()
    assert smr_main(["score-slide", *common, "--out", str(tmp_path / "default")]) == 0
    terminal = capsys.readouterr().out
    given = json.loads((tmp_path / "given" / "summary.json").read_text())
    default = json.loads((tmp_path / "default" / "summary.json").read_text())
    assert default["geometry"]["mpp"] == pytest.approx(mpp)
    assert default["geometry"] == given["geometry"]
    assert default["count"]["counts"] == given["count"]["counts"]
    assert [r["class"] for r in _read_csv(tmp_path / "default" / "cells.csv")] == [
        r["class"] for r in _read_csv(tmp_path / "given" / "cells.csv")
    ]
    # provenance: the export's parameters and the server's own version, in summary.json and on screen
    with SMRClient(clients_server.grpc_url) as client:
        meta = client._grpc.get_server_metadata(as_json=True)
    prov = default["provenance"]
    assert list(prov) == ["manifest_sha256", "run_id", "training_data", "training_images", "val_macro_f1",
                          "smr_version", "triton_version", "model_microns_per_pixel", "notice"]  # fmt: skip
    assert prov["triton_version"] == meta["version"]
    assert prov["model_microns_per_pixel"] == pytest.approx(mpp)
    assert prov["training_data"] == "pbc-dev" and prov["training_images"] > 0
    assert prov["notice"] == "For research use, not for diagnosis."
    manifest = json.loads((clients_server.repository / "MANIFEST.json").read_text())
    from smr.export.repository import manifest_digest

    assert prov["manifest_sha256"] == manifest_digest(manifest)
    assert f"manifest sha256 {prov['manifest_sha256']}" in terminal
    assert f"Triton {meta['version']}" in terminal and "For research use, not for diagnosis." in terminal


def test_classify_skips_and_lists_damaged_images(clients_server, synthetic_slide, tmp_path, capsys):
    images = _slide_patches(synthetic_slide, 3)
    folder = tmp_path / "cells"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"cell-{i}.png")
    good = sorted(folder.glob("*.png"))
    (folder / "cell-1b.png").write_bytes(good[1].read_bytes()[:300])  # truncated
    (folder / "notes.png").write_text("not an image")
    rc = smr_main(["classify", str(folder), "--url", clients_server.grpc_url, "--out",
                   str(tmp_path / "out.csv")])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1
    assert [r["file"] for r in _read_csv(tmp_path / "out.csv")] == [str(p) for p in good]
    err = captured.err.splitlines()
    assert err[-1] == (
        "smr classify: error: 2 of 5 images were skipped because they could not be read (listed above); "
        "the other 3 were classified"
    )
    skipped = [line for line in err if line.startswith("skipped ")]
    assert [line.split(": ")[0] for line in skipped] == [
        f"skipped {folder / 'cell-1b.png'}",
        f"skipped {folder / 'notes.png'}",
    ]
