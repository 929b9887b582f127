"""summary.html: the per-slide table of score-slides, as summary.csv has it."""

from __future__ import annotations

from html.parser import HTMLParser

from smr.clients.summary_html import write_summary_html


class Table(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.links: list[str] = []
        self.row_classes: list[str | None] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
            self.row_classes.append(dict(attrs).get("class"))
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self.links.append(dict(attrs)["href"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_one_row_per_slide_with_the_csv_columns_links_and_failures(tmp_path):
    rows = [
        {"name": "case <a>", "slide": "/s/a.svs", "status": "ok", "error": "", "cells": 512,
         "me_ratio": 2.5, "low_count": False, "report": str(tmp_path / "case <a>" / "report.html")},
        {"name": "case-b", "slide": "/s/b.svs", "status": "failed", "error": "server gone"},
    ]  # fmt: skip
    path = write_summary_html(tmp_path, rows)
    assert path == tmp_path / "summary.html"
    table = Table()
    table.feed(path.read_text(encoding="utf-8"))
    assert table.rows[0] == ["name", "status", "error", "cells", "me_ratio", "low_count"]
    assert table.rows[1] == ["case <a>", "ok", "", "512", "2.5", ""]  # escaped, then read back
    assert table.rows[2] == ["case-b", "failed", "server gone", "", "", ""]
    assert table.links == ["case <a>/report.html"]  # relative to the summary
    assert table.row_classes == [None, None, "failed"]
    assert "<script" not in path.read_text(encoding="utf-8")
