"""``smr synth`` and ``smr synth-slide`` through the ``smr`` entry point."""

from __future__ import annotations

import csv

import pytest
import tiffslide

from smr.cli import main
from smr.core.lineages import PAPER_SPEC


def test_synth_writes_a_set_and_summarises_it(tmp_path, capsys):
    out = tmp_path / "set"
    rc = main(["synth", str(out), "--n-cells", "30", "--size", "32", "--seed", "3", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    with open(out / "manifest.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30
    for name in PAPER_SPEC.classes:
        n = sum(r["class"] == name for r in rows)
        assert n >= 2
        line = next(line for line in text.splitlines() if line.split()[:1] == [name])
        assert int(line.split()[2]) == n  # the summary's count is the manifest's
    assert "wrote 30 patches" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-cells", "5"], "--n-cells must be at least 15"),
        (["--size", "4"], "--size must be between 16 and 1024"),
        (["--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_synth_bad_arguments_exit_2_with_the_reason(tmp_path, capsys, args, message):
    assert main(["synth", str(tmp_path / "x"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smr synth: error: ") and message in err


def test_synth_keeps_an_existing_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("data")
    assert main(["synth", str(tmp_path), "--n-cells", "15", "--size", "16", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_synth_slide_writes_a_readable_slide(tmp_path, capsys):
    out = tmp_path / "slide"
    args = ["synth-slide", str(out), "--cells", "8", "--seed", "2", "--size", "600", "500", "--tile", "256"]
    assert main([*args, "--mpp", "0.5", "--no-progress"]) == 0
    assert "8 detections" in capsys.readouterr().out
    with tiffslide.TiffSlide(out / "slide.tiff") as slide:
        assert slide.dimensions == (600, 500)
        assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
    assert len((out / "detections.csv").read_text(encoding="utf-8").splitlines()) == 9


def test_synth_slide_bad_choice_names_the_valid_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["synth-slide", str(tmp_path / "s"), "--compression", "lzw"])
    assert e.value.code == 2
    assert "choose from 'jpeg', 'deflate'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["synth", "synth-slide"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "docs/synthetic.md" in capsys.readouterr().out
