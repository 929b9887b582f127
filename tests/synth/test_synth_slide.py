"""The synthetic whole slide: pyramidal TIFF readable by tiffslide, detections in CSV and GeoJSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tiffslide
from matplotlib.path import Path as PolygonPath
from PIL import Image

from smr.core.lineages import PAPER_SPEC
from smr.synth.render import FIELD_UM
from smr.synth.slide import CLASS_COLOURS, SlideSettings, write_slide

SETTINGS = SlideSettings(cells=40, seed=4, width=1200, height=900, tile=256, compression="deflate")


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slide") / "s"
    write_slide(out, SETTINGS)
    return out


def _detections(folder: Path) -> list[dict[str, str]]:
    with open(folder / "detections.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_tiffslide_reads_dimensions_levels_and_mpp(slide_dir):
    with tiffslide.TiffSlide(slide_dir / "slide.tiff") as slide:
        assert slide.dimensions == (1200, 900)
        assert slide.level_count >= 3
        assert slide.level_dimensions[1] == (600, 450)
        assert slide.level_downsamples[:3] == pytest.approx((1.0, 2.0, 4.0))
        assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(0.25)
        assert float(slide.properties["tiffslide.mpp-y"]) == pytest.approx(0.25)
        level0 = np.asarray(slide.read_region((0, 0), 0, (1200, 900)).convert("RGB"))
        level1 = np.asarray(slide.read_region((0, 0), 1, (600, 450)).convert("RGB"))
    # level 1 is level 0 reduced 2x (reference: PIL's box filter on the lossless level 0)
    reference = np.asarray(Image.fromarray(level0).reduce(2))
    assert np.abs(level1.astype(int) - reference.astype(int)).mean() < 1.0
    meta = json.loads((slide_dir / "slide.json").read_text())
    assert meta["patch_px"] == pytest.approx(FIELD_UM / 0.25)
    assert [tuple(x) for x in meta["levels"][:2]] == [(1200, 900), (600, 450)]


def test_detections_are_inside_the_slide_on_cells_and_apart(slide_dir):
    rows = _detections(slide_dir)
    assert list(rows[0]) == ["id", "x", "y", "class"]
    assert len(rows) == SETTINGS.cells and len({r["id"] for r in rows}) == len(rows)
    xy = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    assert np.all((xy >= 0) & (xy < [1200, 900]))
    assert {r["class"] for r in rows} <= set(PAPER_SPEC.classes)
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert d.min() * SETTINGS.mpp > 5.0  # centres at least 5 um apart: no overlapping cells
    with tiffslide.TiffSlide(slide_dir / "slide.tiff") as slide:
        img = np.asarray(slide.read_region((0, 0), 0, (1200, 900)).convert("RGB")).astype(int)
    background = np.median(img.sum(-1))
    for x, y in xy.astype(int):
        centre = img[max(0, y - 3) : y + 4, max(0, x - 3) : x + 4].sum(-1).mean()
        assert centre < background - 60, (x, y)  # a stained cell, not glass


def test_geojson_is_a_qupath_feature_collection(slide_dir):
    doc = json.loads((slide_dir / "detections.geojson").read_text())
    assert doc["type"] == "FeatureCollection"
    rows = {r["id"]: r for r in _detections(slide_dir)}
    assert len(doc["features"]) == len(rows)
    for feature in doc["features"]:
        assert feature["type"] == "Feature"
        props = feature["properties"]
        assert props["objectType"] == "detection"
        name = props["classification"]["name"]
        assert props["classification"]["color"] == list(CLASS_COLOURS[name])
        row = rows[feature["id"].removeprefix("cell-")]
        assert row["class"] == name
        if PAPER_SPEC.stage_of(name) is None:
            assert "maturity" not in props
        else:
            assert 0.0 <= props["maturity"] <= 1.0
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert feature["geometry"]["type"] == "Polygon" and len(ring) > 8
        assert np.array_equal(ring[0], ring[-1])
        assert np.all((ring >= 0) & (ring <= [1200, 900]))
        centre = (float(row["x"]), float(row["y"]))
        assert PolygonPath(ring).contains_point(centre)
        # the outline is a cell: between 6 and 22 um across
        span = (ring.max(0) - ring.min(0)) * SETTINGS.mpp
        assert 5.0 < span.min() and span.max() < 24.0


def test_same_seed_same_slide(slide_dir, tmp_path):
    again = tmp_path / "again"
    write_slide(again, SETTINGS)
    for name in ("slide.tiff", "detections.csv", "detections.geojson"):
        assert (again / name).read_bytes() == (slide_dir / name).read_bytes(), name


def test_jpeg_slide_and_point_geometry(tmp_path):
    out = tmp_path / "jpeg"
    settings = SlideSettings(cells=12, seed=1, width=700, height=600, tile=256, geometry="point")
    summary = write_slide(out, settings)
    assert summary.counts and sum(summary.counts.values()) == 12
    with tiffslide.TiffSlide(out / "slide.tiff") as slide:
        assert slide.dimensions == (700, 600)
        region = np.asarray(slide.read_region((0, 0), 0, (700, 600)).convert("RGB"))
    bg = np.median(region.reshape(-1, 3), axis=0)
    assert bg[0] > bg[2]  # warm MGG background survives JPEG colour handling
    doc = json.loads((out / "detections.geojson").read_text())
    assert {f["geometry"]["type"] for f in doc["features"]} == {"Point"}
    with Image.open(out / "thumbnail.png") as thumb:
        assert thumb.size == (700, 600)  # smaller than 1024: the whole level 0


def test_too_many_cells_for_the_size_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="larger --size or fewer --cells"):
        write_slide(tmp_path / "s", SlideSettings(cells=400, width=400, height=400))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (SlideSettings(cells=5, compression="lzw"), "--compression must be one of jpeg, deflate"),
        (SlideSettings(cells=5, width=100, height=100), "--size must be between"),
        (SlideSettings(cells=5, tile=100), "--tile must be a multiple of 16"),
        (SlideSettings(cells=0), "--cells must be at least 1"),
    ],
)
def test_bad_settings_are_named(settings, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        write_slide(tmp_path / "s", settings)
