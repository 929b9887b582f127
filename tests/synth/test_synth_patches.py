"""The patch data set on disk: determinism, manifest, spec, classes, sizes."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smr.core.lineages import PAPER_SPEC, load_spec
from smr.synth.patches import SynthSettings, write_patches

N_CELLS, SIZE = 60, 40


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    write_patches(out, SynthSettings(n_cells=N_CELLS, size=SIZE, seed=5, min_per_class=2))
    return out


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_same_seed_same_bytes_other_seed_other_bytes(dataset, tmp_path):
    again = tmp_path / "again"
    write_patches(again, SynthSettings(n_cells=N_CELLS, size=SIZE, seed=5, min_per_class=2))
    assert _files(again) == _files(dataset)
    other = tmp_path / "other"
    write_patches(other, SynthSettings(n_cells=N_CELLS, size=SIZE, seed=6, min_per_class=2))
    a, b = _files(dataset), _files(other)
    pngs = [k for k in a if k.endswith(".png") and k in b]
    assert sum(a[k] != b[k] for k in pngs) == len(pngs)
    assert a["manifest.csv"] != b["manifest.csv"]


@pytest.mark.slow
def test_worker_count_does_not_change_the_bytes(tmp_path):
    settings = SynthSettings(n_cells=30, size=32, seed=9, min_per_class=1)
    write_patches(tmp_path / "one", settings, workers=1)
    write_patches(tmp_path / "two", settings, workers=2)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_manifest_lists_every_file_once_and_matches_folders(dataset):
    rows = _manifest(dataset)
    assert list(rows[0]) == ["path", "class", "lineage", "maturity"]
    pngs = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*.png"))
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == N_CELLS
    assert sorted(paths) == pngs
    for r in rows:
        assert r["path"].split("/")[0] == r["class"]
        where = PAPER_SPEC.stage_of(r["class"])
        if where is None:
            assert r["lineage"] == "" and r["maturity"] == ""
        else:
            assert r["lineage"] == PAPER_SPEC.lineages[where[0]].name
            assert 0.0 <= float(r["maturity"]) <= 1.0


def test_every_class_present_at_the_requested_size(dataset):
    spec = load_spec(dataset / "lineages.toml")
    assert (spec.lineages, spec.other) == (PAPER_SPEC.lineages, PAPER_SPEC.other)
    folders = sorted(p.name for p in dataset.iterdir() if p.is_dir())
    assert folders == sorted(PAPER_SPEC.classes)
    for name in folders:
        images = list((dataset / name).glob("*.png"))
        assert len(images) >= 2, name
        for path in images:
            with Image.open(path) as im:
                assert im.size == (SIZE, SIZE) and im.mode == "RGB"


def test_written_maturity_is_monotone_with_stage(dataset):
    rows = [r for r in _manifest(dataset) if r["maturity"]]
    for lineage in PAPER_SPEC.lineages:
        medians = [
            np.median([float(r["maturity"]) for r in rows if r["class"] == c]) for c in lineage.classes
        ]
        assert np.all(np.diff(medians) > 0), (lineage.name, medians)


def test_the_data_loader_reads_the_set(dataset):
    from smr.data.folder import FolderDataset

    ds = FolderDataset.scan(dataset)
    assert len(ds) == N_CELLS and not ds.problems
    by_path = {r["path"]: r for r in _manifest(dataset)}
    for sample in ds.samples:
        row = by_path[sample.path.relative_to(dataset).as_posix()]
        assert sample.class_name == row["class"]
        if row["maturity"]:
            assert sample.maturity == pytest.approx(float(row["maturity"]))
        else:
            assert math.isnan(sample.maturity)


def test_refuses_a_non_empty_folder_and_keeps_it(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=re.escape("--overwrite")):
        write_patches(out, SynthSettings(n_cells=20, size=24))
    assert (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # no staging folder left behind


def test_overwrite_replaces_the_folder_completely(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "old.txt").write_text("old")
    write_patches(out, SynthSettings(n_cells=20, size=24), overwrite=True)
    assert not (out / "old.txt").exists() and (out / "manifest.csv").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (SynthSettings(n_cells=10), "--n-cells must be at least 15"),
        (SynthSettings(n_cells=20, size=8), "--size must be between 16 and 1024"),
        (SynthSettings(n_cells=20, label_noise=2.0), r"--label-noise must lie in \[0, 1\]"),
        (SynthSettings(n_cells=20, slides=0), "--slides must be at least 1"),
    ],
)
def test_bad_settings_are_named(settings, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        write_patches(tmp_path / "x", settings)
    assert not any(tmp_path.iterdir())


def test_the_spec_declares_the_scale_the_cells_were_drawn_at(dataset):
    """A patch covers render.FIELD_UM micrometres (what the slide generator's cells are drawn at)."""
    from smr.synth.render import FIELD_UM

    spec = load_spec(dataset / "lineages.toml")
    assert spec.microns_per_pixel == pytest.approx(FIELD_UM / SIZE)
    import json

    assert json.loads((dataset / "synth.json").read_text())["mpp"] == spec.microns_per_pixel
