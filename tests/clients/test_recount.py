"""``smr recount``: a QuPath-style corrected GeoJSON read back into a new count and report."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from smr.cli import main as smr_main
from smr.clients.detections import Detection, cells_feature_collection
from smr.clients.journal import Journal
from smr.clients.outputs import cell_records
from smr.clients.palette import class_colors
from smr.clients.results import BatchOutputs, cells_from_outputs
from tests.clients.helpers import paper_info

N = 80
PATCH = 24


def _scored_folder(tmp_path, *, slide_png=None):
    """A score-slide folder as score-slide leaves it: journal, cells.geojson, summary.json."""
    info = paper_info()
    rng = np.random.default_rng(12)
    probs = rng.dirichlet(np.ones(len(info.classes)) * 0.4, size=N).astype(np.float32)
    out = BatchOutputs(probs, probs.argmax(1), rng.uniform(size=(N, 2)).astype(np.float32),
                       rng.uniform(size=(N, 2)).astype(np.float32))  # fmt: skip
    ids = [f"=cell{i}" if i == 3 else f"c{i}" for i in range(N)]  # one id a spreadsheet would run
    dets = [Detection(i, float(rng.uniform(20, 180)), float(rng.uniform(20, 180))) for i in ids]
    folder = tmp_path / "scored"
    folder.mkdir()
    geometry = {"level": 0, "downsample": 1.0, "region": PATCH, "size": PATCH, "mpp": None}
    run = {"slide": {"name": "case.png"}, "detections": {"count": N}, "geometry": geometry}
    with Journal.open(folder, info, run) as journal:
        journal.append(
            ids[:50], BatchOutputs(probs[:50], out.class_id[:50], out.maturity[:50], out.distance[:50])
        )
        journal.append(
            ids[50:], BatchOutputs(probs[50:], out.class_id[50:], out.maturity[50:], out.distance[50:])
        )
    cells = dict(zip(ids, cells_from_outputs(info, out), strict=True))
    records = cell_records(info, dets, cells)
    doc = cells_feature_collection(records, {}, class_colors(info), info.lineage_names)
    (folder / "cells.geojson").write_text(json.dumps(doc))
    provenance = {"run_id": "run-x", "val_macro_f1": 0.7, "manifest_sha256": "f" * 64}
    (folder / "summary.json").write_text(json.dumps({"provenance": provenance}))
    return info, folder, doc, cells, dets


def _qupath_export(doc, path):
    """What QuPath writes back: it keeps geometry, id, name, classification and measurements only."""
    for f in doc["features"]:
        f["properties"].pop("smr", None)
    path.write_text(json.dumps(doc, indent=1))
    return path


def _review(doc, info):
    """A reviewer's work: reclassify four cells, delete one, unclassify one, add one."""
    features = doc["features"]
    by_name = {f["properties"]["name"]: f for f in features}
    changes = {"c0": "monocyte", "=cell3": "blast", "c10": "band", "c11": "lymphocyte"}
    for name, cls in changes.items():
        if by_name[name]["properties"]["classification"]["name"] == cls:  # make each a real change
            cls = "eosinophil"
            changes[name] = cls
        by_name[name]["properties"]["classification"] = {"name": cls, "color": [1, 2, 3]}
    features.remove(by_name["c20"])  # deleted: not a cell
    del by_name["c21"]["properties"]["classification"]  # unclassified: left out of the count
    del by_name["c30"]["properties"]["name"]  # renamed away in QuPath: matched by the feature's UUID
    features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [50.0, 60.0]},
                     "properties": {"objectType": "detection", "name": "new-1",
                                    "classification": {"name": "proerythroblast"}}})  # fmt: skip
    return changes


def _read_csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_recount_counts_the_reviewed_classes_and_marks_every_correction(tmp_path, capsys):
    info, folder, doc, cells, _ = _scored_folder(tmp_path)
    changes = _review(doc, info)
    corrected = _qupath_export(doc, folder / "reviewed.geojson")
    code = smr_main(["recount", str(corrected)])
    assert code == 0, capsys.readouterr().err
    out = folder / "recount"

    # the count, independently: SMR's classes with the reviewer's changes applied
    expected = Counter(v for k, v in ({i: c.class_name for i, c in cells.items()} | changes).items()
                       if k not in ("c20", "c21"))  # fmt: skip
    expected["proerythroblast"] += 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"]["counts"] == {c: expected.get(c, 0) for c in info.classes}
    assert summary["count"]["total"] == N - 2 + 1 == sum(expected.values())
    assert summary["smr_count"]["counts"] == {c: sum(1 for x in cells.values() if x.class_name == c)
                                              for c in info.classes}  # fmt: skip
    fixes = {f["id"]: (f["kind"], f["reviewed_class"]) for f in summary["corrections"]["cells"]}
    assert fixes == {**{k: ("changed", v) for k, v in changes.items()}, "c20": ("removed", None),
                     "c21": ("removed", None), "new-1": ("added", "proerythroblast")}  # fmt: skip
    assert summary["provenance"]["run_id"] == "run-x"

    rows = {r["id"]: r for r in _read_csv(out / "cells.csv")}
    assert rows["'=cell3"]["class"] == changes["=cell3"]  # the id is written inert for spreadsheets
    assert rows["c20"]["correction"] == "removed" and rows["c20"]["class"] == ""
    assert rows["new-1"]["smr_class"] == "" and rows["new-1"]["correction"] == "added"
    assert rows["c1"]["correction"] == "" and rows["c1"]["class"] == cells["c1"].class_name
    assert rows["c30"]["correction"] == "" and rows["c30"]["class"] == cells["c30"].class_name

    html = (out / "report.html").read_text()
    table = re.search(r"<table id=corrections>(.*?)</table>", html, re.S).group(1)
    assert table.count("<tr>") == 1 + len(fixes)
    for cell_id in fixes:
        assert f"<td class=n>{cell_id}</td>" in table
    assert "SMR before review cells" in html
    for cell_id, cls in changes.items():  # in the gallery of the reviewer's class, marked
        gallery = re.search(rf"<div class=gallery id=gallery-{cls}>(.*?)\n<h[23]", html, re.S)
        card = re.search(rf"<div class='cell fix' data-id='{re.escape(cell_id)}'>.*?reviewer: ([\w ]+)<",
                         gallery.group(1), re.S)  # fmt: skip
        assert card is not None and card.group(1) == cls.replace("_", " ")
    printed = capsys.readouterr().out
    assert f"{N - 1} cells after review: 4 reclassified, 2 removed, 1 added" in printed


def test_recount_cuts_cell_images_from_the_slide_as_score_slide_did(tmp_path):
    info, folder, doc, cells, dets = _scored_folder(tmp_path)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "case.png")
    corrected = _qupath_export(doc, tmp_path / "reviewed.geojson")
    code = smr_main(["recount", str(corrected), "--scored", str(folder), "--out", str(tmp_path / "r"),
                     "--slide", str(tmp_path / "case.png"), "--gallery", "2"])  # fmt: skip
    assert code == 0
    html = (tmp_path / "r" / "report.html").read_text()
    cards = re.findall(
        r"<div class='cell[^']*' data-id='([^']+)'><img alt='[^']*' "
        r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'>",
        html,
    )
    assert cards
    where = {d.id: d for d in dets}
    for cell_id, b64 in cards[:6]:
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
        d = where[cell_id]
        x0, y0 = int(np.floor(d.x - PATCH / 2 + 0.5)), int(np.floor(d.y - PATCH / 2 + 0.5))
        np.testing.assert_array_equal(got, pixels[y0 : y0 + PATCH, x0 : x0 + PATCH])


def test_a_class_the_model_does_not_serve_is_refused_and_nothing_is_written(tmp_path, capsys):
    info, folder, doc, _, _ = _scored_folder(tmp_path)
    doc["features"][5]["properties"]["classification"] = {"name": "Tumor"}
    corrected = _qupath_export(doc, tmp_path / "reviewed.geojson")
    code = smr_main(["recount", str(corrected), "--scored", str(folder), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "r").exists()
    assert err.startswith("smr recount: error: ") and len(err.strip().splitlines()) == 1
    assert "'Tumor' (1 cells, e.g. c5)" in err and "remove the classification" in err


@pytest.mark.parametrize("case", ["not-scored", "same-folder", "missing"])
def test_unusable_inputs_give_a_one_line_error(tmp_path, capsys, case):
    info, folder, doc, _, _ = _scored_folder(tmp_path)
    corrected = _qupath_export(doc, tmp_path / "reviewed.geojson")
    before = sorted(p.name for p in folder.iterdir())
    args = {
        "not-scored": [str(corrected), "--scored", str(tmp_path)],
        "same-folder": [str(corrected), "--scored", str(folder), "--out", str(folder)],
        "missing": [str(tmp_path / "nope.geojson"), "--scored", str(folder), "--out", str(tmp_path / "r")],
    }[case]
    code = smr_main(["recount", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("smr recount: error: ") and len(err.strip().splitlines()) == 1
    message = {"not-scored": "is not a score-slide output folder", "same-folder": "choose another folder",
               "missing": "no such file"}[case]  # fmt: skip
    assert message in err
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written, nothing lost


def test_recount_flags_cells_with_the_margin_the_server_flagged_them_with(tmp_path):
    """The journal records the served review margin; recount re-derives the flags with it."""
    import dataclasses

    from smr.clients.recount import read_scored_run

    info = dataclasses.replace(paper_info(), review_margin=0.3)
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(len(info.classes)), size=20).astype(np.float32)
    out = BatchOutputs(probs, probs.argmax(1), rng.uniform(size=(20, 2)).astype(np.float32),
                       rng.uniform(size=(20, 2)).astype(np.float32))  # fmt: skip
    ids = [f"c{i}" for i in range(20)]
    with Journal.open(tmp_path, info, {"slide": {"name": "s.png"}}) as journal:
        journal.append(ids, out)
    run = read_scored_run(tmp_path)
    assert run.info.review_margin == 0.3
    served = [c.borderline for c in cells_from_outputs(info, out, margin=0.3)]
    assert [run.cells[i].borderline for i in ids] == served
    assert served != [c.borderline for c in cells_from_outputs(info, out, margin=0.05)]
