"""``smr data check`` through the real command entry point."""

from __future__ import annotations

import json
import re

import pytest

from smr.cli import main
from smr.core.lineages import load_spec


def _run(capsys, *argv):
    code = main(["data", "check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_pbc_dev(pbc_dev, capsys):
    code, out, _ = _run(capsys, str(pbc_dev))
    assert code == 0
    spec = load_spec(pbc_dev / "lineages.toml")
    for c in spec.classes:  # one table row per class with its independent file count
        n = len(list((pbc_dev / c).glob("*.jpg")))
        assert re.search(rf"^\s*\d+\s+{c}\s+{n}\s", out, re.M), c
    assert "spec: 10 classes, 1 lineage(s), 5 other" in out
    assert "total: 600 images in 10 classes" in out
    assert "granulopoiesis (5 classes): " + " -> ".join(spec.lineages[0].classes) in out
    assert "OK: the data set can be used" in out
    assert "height  min" in out and "most common (HxW)" in out


def test_check_json(pbc_small, capsys):
    code, out, _ = _run(capsys, str(pbc_small), "--json")
    assert code == 0
    doc = json.loads(out)
    spec = load_spec(pbc_small / "lineages.toml")
    assert doc["usable"] is True and doc["classes"] == list(spec.classes)
    assert [f["name"] for f in doc["folders"]] == list(spec.classes)
    assert all(f["images"] == 3 for f in doc["folders"])
    assert doc["total_images"] == 30
    h = doc["image_sizes"]["height"]
    assert h["min"] <= h["median"] <= h["max"]
    assert sum(doc["image_modes"].values()) == 30
    assert doc["spec"]["lineages"][0]["classes"] == list(spec.lineages[0].classes)


def test_check_reports_damaged_files_and_stays_usable(pbc_small, capsys):
    victim = sorted((pbc_small / "band").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:2000])
    (pbc_small / "basophil" / "fake.png").write_text("text")
    code, out, _ = _run(capsys, str(pbc_small), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["usable"]
    assert len(doc["problems"]) == 2
    assert any(p.startswith(f"{victim}: ") for p in doc["problems"])
    folders = {f["name"]: f for f in doc["folders"]}
    assert (folders["band"]["images"], folders["band"]["damaged"]) == (2, 1)
    assert (folders["basophil"]["images"], folders["basophil"]["damaged"]) == (3, 1)


def test_check_lists_every_mismatch(pbc_small, capsys):
    (pbc_small / "monocyte").rename(pbc_small / "monocytes")
    (pbc_small / "platelet").mkdir()
    for p in (pbc_small / "band").iterdir():
        p.unlink()
    code, out, _ = _run(capsys, str(pbc_small))
    assert code == 1
    assert "NOT USABLE" in out
    errors = out.split("errors (")[1]
    for name in ("'monocytes'", "'platelet'", "'monocyte'", "class 'band' has no images"):
        assert name in errors
    assert re.search(r"monocytes\s+3\s+not in spec", out)  # the unknown folder is still counted


def test_check_bad_spec_is_reported(pbc_small, capsys):
    (pbc_small / "lineages.toml").write_text('[[lineage]]\nname = "g"\nclasses = ["band"]\n')
    code, out, _ = _run(capsys, str(pbc_small))
    assert code == 1
    assert "lineage 'g' has only one class" in out and "lineages.toml:2" in out
    assert re.search(r"band\s+3", out)


def test_check_with_spec_option_and_ignore(matek_like, tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    (matek_like / "lineages.toml").rename(spec)
    code, out, _ = _run(capsys, str(matek_like))
    assert code == 1 and "no lineages.toml" in out
    code, out, _ = _run(capsys, str(matek_like), "--spec", str(spec))
    assert code == 0, out
    assert re.search(r"ART\s+0\s+ignored", out)
    assert "total: 12 images in 4 classes" in out
    assert "warnings" in out and "class 'MYB' has only 2 image(s)" in out


@pytest.mark.parametrize(
    "argv", [["data", "check", "/nonexistent/dir"], ["data", "check", ".", "--spec", "/no.toml"]]
)
def test_check_usage_errors(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "smr data check: error:" in err and "/no" in err


def test_data_without_command(capsys):
    assert main(["data"]) == 2
    assert "choose a command: check" in capsys.readouterr().err


def test_check_reports_the_scale_or_that_it_is_unknown(pbc_small, capsys):
    code, out, _ = _run(capsys, str(pbc_small))
    assert code == 0
    assert "scale: unknown (no [imaging] microns_per_pixel in the spec)" in out
    assert (
        "the pixel size is unknown: add [imaging] microns_per_pixel = ... to lineages.toml, or every "
        "score-slide with this model will need --mpp"
    ) in out
    spec = pbc_small / "lineages.toml"
    spec.write_text(spec.read_text() + "\n[imaging]\nmicrons_per_pixel = 0.1\n")
    code, out, _ = _run(capsys, str(pbc_small), "--json")
    doc = json.loads(out)
    from PIL import Image

    sizes = []
    for p in sorted(pbc_small.glob("*/*.jpg")):
        with Image.open(p) as im:
            sizes.append(im.size)  # (width, height)
    med_h = sorted(h for _, h in sizes)[len(sizes) // 2 - 1 : len(sizes) // 2 + 1]
    assert doc["microns_per_pixel"] == 0.1
    assert doc["field_of_view_um"][0] == pytest.approx(0.1 * sum(med_h) / 2)  # 30 images: mean of middle two
    assert not any("pixel size is unknown" in w for w in doc["warnings"])
    code, out, _ = _run(capsys, str(pbc_small))
    assert "scale: 0.1 µm/px; a median image covers" in out
