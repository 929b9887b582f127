"""``smr data crop``: the labelled cells of a slide as a folder data set, cropped as score-slide crops."""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from smr.cli import main
from smr.clients.detections import read_detections
from smr.clients.patches import crop_patch, inside, patch_geometry
from smr.clients.slides import open_slide
from smr.core.lineages import load_spec
from smr.data.folder import FolderDataset
from smr.synth.patches import patch_spec
from smr.synth.render import FIELD_UM
from smr.synth.slide import SlideSettings, write_slide

SIZE = 32
MPP = FIELD_UM / SIZE


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crop") / "case"
    write_slide(folder, SlideSettings(cells=24, seed=3))
    return folder


def _spec_file(tmp_path, slide_folder, drop: str | None = None):
    """The synthetic spec (no scale), optionally without one class of the ``other`` group."""
    spec = dataclasses.replace(patch_spec(SIZE), microns_per_pixel=None)
    if drop is not None:
        spec = dataclasses.replace(spec, other=tuple(c for c in spec.other if c != drop))
    path = tmp_path / "lineages.toml"
    path.write_text(spec.to_toml())
    return path


def test_every_labelled_cell_becomes_the_patch_score_slide_would_send(slide, tmp_path, capsys):
    spec = _spec_file(tmp_path, slide)
    out = tmp_path / "data"
    argv = ["data", "crop", str(slide / "slide.tiff"), "--out", str(out), "--spec", str(spec)]
    assert main([*argv, "--size", str(SIZE), "--mpp", str(MPP)]) == 0
    detections = read_detections(slide / "detections.csv")
    with open_slide(slide / "slide.tiff") as s:
        geom = patch_geometry(s, SIZE, mpp=MPP)
        kept = [d for d in detections if inside(s, d)]
        for d in kept:  # the single-cell crop is the reference for the block-wise reader
            saved = np.asarray(Image.open(out / d.label / f"slide_{d.id}.png"))
            np.testing.assert_array_equal(saved, crop_patch(s, d, geom))
    dataset = FolderDataset.scan(out)
    assert dataset.spec.microns_per_pixel == pytest.approx(MPP)
    counted = Counter(dataset.spec.classes[i] for i in dataset.labels)
    assert counted == Counter(d.label for d in kept)

    # the same folder at another scale is refused, and nothing is added
    before = sorted(p.name for p in out.rglob("*.png"))
    capsys.readouterr()
    assert main([*argv, "--size", str(SIZE), "--mpp", str(2 * MPP)]) == 2
    assert "another lineages.toml or scale" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*.png")) == before


def test_cells_of_classes_the_spec_does_not_name_are_left_out_and_counted(slide, tmp_path, capsys):
    with (slide / "detections.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    dropped = Counter(r["class"] for r in rows).most_common(1)[0][0]
    lineage_classes = {c for lin in load_spec(_spec_file(tmp_path, slide)).lineages for c in lin.classes}
    if dropped in lineage_classes:  # only an "other" class can be dropped from the spec
        dropped = next(r["class"] for r in rows if r["class"] not in lineage_classes)
    spec = _spec_file(tmp_path, slide, drop=dropped)
    out = tmp_path / "data"
    argv = ["data", "crop", str(slide / "slide.tiff"), "--out", str(out), "--spec", str(spec)]
    assert main([*argv, "--size", str(SIZE), "--mpp", str(MPP)]) == 0
    n_dropped = sum(r["class"] == dropped for r in rows)
    captured = capsys.readouterr()
    assert f"{n_dropped} of unknown classes" in captured.out
    # the library's warning reaches stderr through the command line's logging, and -q silences it
    assert f"smr.data.crop: WARNING: left out {n_dropped} detections" in captured.err
    assert not (out / dropped).exists()
    assert main(["-q", *argv, "--size", str(SIZE), "--mpp", str(MPP)]) == 0
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "8", "--mpp", "0.5"], "smr data crop: error: --size 8: choose 16..1024 pixels"),
        (["b.tiff", "--size", "32", "--mpp", "0.5", "--detections", "x.csv"],
         "smr data crop: error: --detections is for one SLIDE; "
         "for several, put detections.csv beside each slide"),
    ],
)  # fmt: skip
def test_bad_options_get_one_line(slide, tmp_path, capsys, extra, message):
    spec = _spec_file(tmp_path, slide)
    argv = [
        "data",
        "crop",
        str(slide / "slide.tiff"),
        *extra,
        "--out",
        str(tmp_path / "d"),
        "--spec",
        str(spec),
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message
