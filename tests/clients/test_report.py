"""The HTML report: self-contained, with intervals, galleries and provenance, and rendered by Chromium."""

from __future__ import annotations

import base64
import html as html_lib
import io
import re

import numpy as np
import pytest
from PIL import Image
from scipy.stats import binomtest

from smr.clients.report import (
    RESEARCH_NOTICE,
    Correction,
    GalleryCell,
    ReportData,
    render_report,
    review_galleries,
    write_report,
)
from smr.clients.results import BatchOutputs, cells_from_outputs
from smr.clients.summary import LOW_COUNT, differential_count
from tests.clients.helpers import chromium_screenshot, paper_info, screenshot_stats

PROVENANCE = {
    "manifest_sha256": "ab12cd34ef56" + "0" * 52,
    "run_id": "run-2026-12-03-demo",
    "training_data": "synthetic marrow (smr synth, seed 0)",
    "training_images": 3000,
    "val_macro_f1": 0.7412,
    "smr_version": "0.1.0",
    "triton_version": "2.51.0",
    "model_microns_per_pixel": 0.53125,
    "notice": "For research use, not for diagnosis.",
}


def _cells(n_cells: int, seed: int = 0):
    info = paper_info()
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(info.classes)) * 0.3, size=n_cells).astype(np.float32)
    cls = probs.argmax(1)
    maturity = np.zeros((n_cells, 2), np.float32)
    for j, lin in enumerate(info.lineages):  # positions near each class's target, plus noise
        for i in range(n_cells):
            name = info.classes[cls[i]]
            base = lin.targets[lin.classes.index(name)] if name in lin.classes else rng.uniform()
            maturity[i, j] = np.clip(base + rng.normal(0, 0.08), 0, 1)  # some land on the ends
    out = BatchOutputs(probs, cls, maturity, rng.uniform(0, 2, (n_cells, 2)).astype(np.float32))
    cells = {f"cell-{i}": c for i, c in enumerate(cells_from_outputs(info, out, margin=0.1))}
    where = {k: (float(rng.uniform(0, 5000)), float(rng.uniform(0, 5000))) for k in cells}
    return info, cells, where, rng


def _report_data(n_cells: int, seed: int = 0, *, provenance=PROVENANCE, images: bool = True) -> ReportData:
    info, cells, where, rng = _cells(n_cells, seed)
    scored = list(cells.values())
    count = differential_count(
        info, [c.class_name for c in scored], positions=[c.position for c in scored],
        borderline=[c.borderline for c in scored],
    )  # fmt: skip
    reference = differential_count(
        info, [info.classes[k] for k in rng.integers(0, len(info.classes), n_cells)]
    )
    positions = {
        lin.name: ([c.position for c in scored if c.lineage == lin.name],
                   [c.class_name for c in scored if c.lineage == lin.name])
        for lin in info.lineages
    }  # fmt: skip
    colours = {k: rng.integers(0, 255, 3, dtype=np.uint8) for k in cells}

    def crop(cell_id: str) -> np.ndarray:
        return np.broadcast_to(colours[cell_id], (64, 64, 3)).copy()

    galleries = review_galleries(info, cells, where, crop if images else None, per_class=4, flagged=10)
    return ReportData(
        title="SMR report: test slide", info=info, count=count, positions=positions, galleries=galleries,
        reference=reference, outside_ids=["far-1", "far-2"], facts={"slide": "test.tiff"},
        provenance=provenance,
    )  # fmt: skip


def _images(html: str) -> list[Image.Image]:
    out = []
    for b64 in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html):
        out.append(Image.open(io.BytesIO(base64.b64decode(b64))))
    return out


def _pct_ci(k: int, n: int) -> str:
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return f"{100 * ci.low:.1f}–{100 * ci.high:.1f}"


def test_report_is_self_contained_and_shows_every_part():
    data = _report_data(300)
    html = render_report(data)
    assert not re.search(r"(src|href)=['\"]?(https?:|//|file:)", html)  # nothing fetched from elsewhere
    table = re.search(r"<table id=differential-count>(.*?)</table>", html, re.S).group(1)
    for c in data.info.classes:
        row = re.search(
            rf"</span>{c}</td><td class=n>[^<]*</td><td>(\d+)</td><td>([\d.]+)</td><td class=ci>([^<]*)</td>"
            rf"<td>(\d+)</td><td>([\d.]+)</td><td class=ci>([^<]*)</td>",
            table,
        )
        assert row is not None, c
        assert int(row.group(1)) == data.count.counts[c]
        assert float(row.group(2)) == pytest.approx(data.count.percentages[c], abs=0.05)
        assert row.group(3) == _pct_ci(data.count.counts[c], data.count.total)  # the interval, independently
        assert row.group(6) == _pct_ci(data.reference.counts[c], data.reference.total)
    assert "id=maturation-index" in html and "id=borderline-gallery" in html
    galleries = data.galleries
    n_gallery = len(galleries.flagged) + sum(len(v) for v in galleries.by_class.values())
    images = _images(html)
    # the count plot, one plot per lineage, the galleries
    assert len(images) == 1 + len(data.info.lineages) + n_gallery
    assert all(im.size[0] > 10 and im.size[1] > 10 for im in images)
    assert "far-1, far-2" in html
    assert "id=low-count-warning" in html and data.count.total < LOW_COUNT
    assert "id=share-by-class" in html and "id=share-by-curve" in html and "id=curve-ends" in html


def test_the_me_ratio_and_blasts_carry_their_intervals():
    data = _report_data(300)
    html = render_report(data)
    kpis = re.search(r"<div class=kpis id=kpis>(.*?)</div></div></div>", html, re.S).group(0)
    m, e = data.count.myeloid, data.count.erythroid
    ci = binomtest(m, m + e).proportion_ci(0.95, method="exact")
    assert f"{m / e:.2f}:1" in kpis
    assert f"95 % CI {ci.low / (1 - ci.low):.2f}–{ci.high / (1 - ci.high):.2f}" in kpis
    assert f"95 % CI {_pct_ci(data.count.blasts, data.count.total)} %" in kpis
    assert "Clopper-Pearson" in html


def test_galleries_put_blasts_first_and_the_least_confident_cells_first():
    info, cells, where, _ = _cells(400, seed=3)
    crops = []

    def crop(cell_id: str) -> np.ndarray:
        crops.append(cell_id)
        return np.zeros((8, 8, 3), np.uint8)

    galleries = review_galleries(info, cells, where, crop, per_class=5, flagged=7)
    assert next(iter(galleries.by_class)) == "blast"
    assert list(galleries.by_class)[1:] == [
        c for c in info.classes if c != "blast" and c in galleries.by_class
    ]
    for c, items in galleries.by_class.items():
        members = sorted((cell.probability, k) for k, cell in cells.items() if cell.class_name == c)
        assert [g.id for g in items] == [k for _, k in members[:5]]  # lowest probability first
        assert galleries.class_totals[c] == len(members)
        assert all(g.x == where[g.id][0] and g.y == where[g.id][1] for g in items)
    flagged = sorted((cell.probability, k) for k, cell in cells.items() if cell.borderline)
    assert [g.id for g in galleries.flagged] == [k for _, k in flagged[:7]]
    assert galleries.flagged_total == len(flagged)
    assert len(crops) == len(set(crops))  # each cell's image is cut once
    html = render_report(_report_data(300))
    first = re.search(r"<div class=gallery id=gallery-(\w+)>", html).group(1)
    assert first == "blast"
    blasts = re.search(r"<div class=gallery id=gallery-blast>(.*?)\n<h[23]", html, re.S).group(1)
    for cell_id, caption in re.findall(r"data-id='([^']+)'><img [^>]*>(.*?)</div>", blasts):
        assert re.search(r"\(\d+, \d+\)", caption) and "SVM: blast 0." in caption and "t=0." in caption
        assert cell_id in caption


def test_provenance_in_the_header_and_the_notice_always():
    html = render_report(_report_data(60))
    line = html_lib.unescape(re.search(r"<div class=prov id=provenance-line>(.*?)</div>", html).group(1))
    for needle in ("run-2026-12-03-demo", "validation macro F1 0.7412", "manifest ab12cd34ef56", "SMR 0.1.0",
                   "Triton 2.51.0", "3000 images"):  # fmt: skip
        assert needle in line
    table = re.search(r"<table id=provenance>(.*?)</table>", html, re.S).group(1)
    assert PROVENANCE["manifest_sha256"] in table and "0.53125" in table
    assert html.count(RESEARCH_NOTICE) == 2  # header and footer, once each although provenance repeats it
    bare = render_report(_report_data(60, provenance=None))
    assert bare.count(RESEARCH_NOTICE) == 2 and "Model provenance unknown" in bare


def test_corrections_are_listed_and_marked():
    data = _report_data(120, images=False)
    first = next(iter(data.galleries.by_class.values()))[0]
    first.reviewed_as = "monocyte"
    data.corrections = [
        Correction(first.id, first.class_name, "monocyte", first.x, first.y, first.probability),
        Correction("gone", "band", None),
        Correction("new", None, "lymphocyte", 1.0, 2.0),
    ]
    data.reference_label = "SMR before review"
    html = render_report(data)
    table = re.search(r"<table id=corrections>(.*?)</table>", html, re.S).group(1)
    assert (
        table.count("<tr>") == 4 and "(removed: not counted)" in table and "(added by the reviewer)" in table
    )
    assert f"data-id='{first.id}'>" in html and "reviewer: monocyte" in html
    assert "SMR before review cells" in html
    assert "no image" in html and "data:image/png" in html  # cells without images, plots with


def test_no_warning_with_enough_cells():
    html = render_report(_report_data(LOW_COUNT + 20, seed=1))
    assert "id=low-count-warning" not in html


def test_the_old_flagged_gallery_still_renders():
    data = _report_data(80)
    data.gallery = [
        GalleryCell("x-1", np.zeros((16, 16, 3), np.uint8), "band", "band", 0.7, "curve says band")
    ]
    data.galleries = None
    html = render_report(data)
    assert "data-id='x-1'" in html and "Flagged for review" in html


@pytest.mark.integration
def test_report_renders_in_headless_chromium(tmp_path):
    data = _report_data(300)
    path = write_report(tmp_path / "report.html", data)
    png = tmp_path / "report.png"
    html = path.read_text()
    # the DOM: intervals, galleries and provenance are in the page Chromium renders
    assert "<th>95 % CI</th>" in html and "id=gallery-blast" in html and "id=borderline-gallery" in html
    assert "id=provenance-line" in html and RESEARCH_NOTICE in html
    chromium_screenshot(path, png, width=1200, height=9000)
    stats = screenshot_stats(png)
    assert stats["shape"][:2] == (9000, 1200)
    assert stats["non_white"] > 0.05  # text, tables, plots, galleries: not a blank page
    assert stats["colourful"] > 0.01  # the plots' and the galleries' colours made it to the screen
    assert stats["distinct"] > 200
    from PIL import Image

    arr = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    top = arr[:260]  # the header: provenance line and the red research notice
    notice_red = (top[..., 0] > 200) & (top[..., 1] < 240) & (top[..., 0] - top[..., 2] > 15)
    assert notice_red.mean() > 0.005
    # the galleries' cell images are flat colours: many large single-colour squares further down
    lower = arr[2600:]
    flat = (np.abs(np.diff(lower, axis=1)).sum(axis=2) == 0) & (lower.min(axis=2)[:, 1:] < 235)
    assert flat.mean() > 0.02
