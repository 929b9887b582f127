"""The HTML report: self-contained, with the count table, plots and gallery, and rendered by Chromium."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from smr.clients.report import GalleryCell, ReportData, render_report, write_report
from smr.clients.results import BatchOutputs, cells_from_outputs
from smr.clients.summary import LOW_COUNT, differential_count
from tests.clients.helpers import chromium_screenshot, paper_info, screenshot_stats


def _report_data(n_cells: int, seed: int = 0) -> ReportData:
    info = paper_info()
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(info.classes)) * 0.3, size=n_cells).astype(np.float32)
    cls = probs.argmax(1)
    maturity = np.zeros((n_cells, 2), np.float32)
    for j, lin in enumerate(info.lineages):  # positions near each class's target, plus noise
        for i in range(n_cells):
            name = info.classes[cls[i]]
            base = lin.targets[lin.classes.index(name)] if name in lin.classes else rng.uniform()
            maturity[i, j] = np.clip(base + rng.normal(0, 0.08), 0, 1)
    out = BatchOutputs(probs, cls, maturity, rng.uniform(0, 2, (n_cells, 2)).astype(np.float32))
    cells = cells_from_outputs(info, out, margin=0.03)
    count = differential_count(
        info, [c.class_name for c in cells], positions=[c.position for c in cells],
        borderline=[c.borderline for c in cells],
    )  # fmt: skip
    reference = differential_count(
        info, [info.classes[k] for k in rng.integers(0, len(info.classes), n_cells)]
    )
    positions = {
        lin.name: ([c.position for c in cells if c.lineage == lin.name],
                   [c.class_name for c in cells if c.lineage == lin.name])
        for lin in info.lineages
    }  # fmt: skip
    gallery = [
        GalleryCell(f"cell-{i}", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), c.class_name,
                    c.stage_estimate, c.position, c.borderline_reason)
        for i, c in enumerate(cells) if c.borderline
    ][:12]  # fmt: skip
    return ReportData(
        title="SMR report: test slide", info=info, count=count, positions=positions, gallery=gallery,
        reference=reference, outside_ids=["far-1", "far-2"], facts={"slide": "test.tiff"},
    )  # fmt: skip


def _images(html: str) -> list[Image.Image]:
    out = []
    for b64 in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html):
        out.append(Image.open(io.BytesIO(base64.b64decode(b64))))
    return out


def test_report_is_self_contained_and_shows_every_part():
    data = _report_data(300)
    html = render_report(data)
    assert not re.search(r"(src|href)=['\"]?(https?:|//|file:)", html)  # nothing fetched from elsewhere
    table = re.search(r"<table id=differential-count>(.*?)</table>", html, re.S).group(1)
    for c in data.info.classes:
        row = re.search(rf"</span>{c}</td><td class=n>[^<]*</td><td>(\d+)</td><td>([\d.]+)</td>", table)
        assert row is not None, c
        assert int(row.group(1)) == data.count.counts[c]
        assert float(row.group(2)) == pytest.approx(data.count.percentages[c], abs=0.05)
    assert "id=maturation-index" in html and "id=borderline-gallery" in html
    images = _images(html)
    # the count plot, one plot per lineage, the gallery
    assert len(images) == 1 + len(data.info.lineages) + len(data.gallery)
    assert all(im.size[0] > 10 and im.size[1] > 10 for im in images)
    assert "far-1, far-2" in html
    assert "id=low-count-warning" in html and data.count.total < LOW_COUNT


def test_no_warning_with_enough_cells():
    html = render_report(_report_data(LOW_COUNT + 20, seed=1))
    assert "id=low-count-warning" not in html


@pytest.mark.integration
def test_report_renders_in_headless_chromium(tmp_path):
    data = _report_data(300)
    path = write_report(tmp_path / "report.html", data)
    png = tmp_path / "report.png"
    chromium_screenshot(path, png, width=1200, height=2400)
    stats = screenshot_stats(png)
    assert stats["shape"][:2] == (2400, 1200)
    assert stats["non_white"] > 0.05  # text, tables, plots: not a blank page
    assert stats["colourful"] > 0.01  # the plots' and the gallery's colours made it to the screen
    assert stats["distinct"] > 200
