"""Fixtures of the client tests: a real server on a real export, its offline reference, a synthetic slide.

The server fixtures reuse the serving tests' helpers (``tests/serving/serving_helpers.py``):
``smr export --runtime python`` of an untrained run at 224 px, served by the embedded tritonserver.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from smr.serving.launcher import TritonProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "serving"))
from serving_helpers import OfflinePipeline, export_untrained_repository  # noqa: E402

SLIDE_CELLS = 60
OUTSIDE_IDS = ("outside-left", "outside-below")


@pytest.fixture(scope="session")
def clients_repository(tmp_path_factory) -> Path:
    return export_untrained_repository(tmp_path_factory.mktemp("clients-export"))


@pytest.fixture(scope="session")
def clients_server(clients_repository):
    """A real tritonserver on the exported ``smr`` ensemble, on free loopback ports."""
    with TritonProcess(clients_repository, ready_timeout=300) as server:
        yield server


@pytest.fixture(scope="session")
def offline(clients_repository) -> OfflinePipeline:
    """The reference pipeline: onnxruntime on model.onnx, the numpy SVM and the curve projection."""
    return OfflinePipeline(clients_repository)


@dataclass(frozen=True)
class SyntheticSlide:
    folder: Path
    slide: Path
    detections: Path  # the generator's detections plus OUTSIDE_IDS, which lie off the slide
    geojson: Path  # the generator's QuPath GeoJSON (polygons)
    ids: list[str]  # every detection id in file order
    mpp: float  # patch resolution that matches the generator's cell patches at the server's size


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory) -> SyntheticSlide:
    from smr.synth.render import FIELD_UM
    from smr.synth.slide import SlideSettings, write_slide

    folder = tmp_path_factory.mktemp("synthetic-slide") / "case"
    summary = write_slide(folder, SlideSettings(cells=SLIDE_CELLS, seed=11))
    with open(folder / "detections.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    rows.insert(3, {"id": OUTSIDE_IDS[0], "x": "-40", "y": "100", "class": rows[0]["class"]})
    rows.append({"id": OUTSIDE_IDS[1], "x": "100", "y": str(summary.height + 25), "class": rows[0]["class"]})
    detections = folder / "detections-with-outside.csv"
    with open(detections, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "x", "y", "class"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return SyntheticSlide(
        folder=folder, slide=folder / "slide.tiff", detections=detections,
        geojson=folder / "detections.geojson", ids=[r["id"] for r in rows], mpp=FIELD_UM / 224,
    )  # fmt: skip
