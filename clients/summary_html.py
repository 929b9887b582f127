"""``summary.html``: the per-slide table of ``smr score-slides`` (the rows of ``summary.csv``) for a browser.

One row per slide, the columns of ``summary.csv`` in the same order; a slide's name links to its
``report.html`` (relative, so the folder can be moved), failed slides are marked. Self-contained:
no scripts, no external files.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text

__all__ = ["SUMMARY_HTML", "write_summary_html"]

SUMMARY_HTML = "summary.html"
_HIDDEN = ("slide", "report")  # shown as the name's tooltip and link

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.text { text-align: left; }
tr.failed td { background: #fde8e8; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    return html.escape(str(value))


def write_summary_html(out_dir: str | Path, rows: list[dict[str, Any]], title: str | None = None) -> Path:
    """Write ``out_dir/summary.html`` with one row per slide (``rows`` as ``summary.csv`` has them)."""
    out_dir = Path(out_dir)
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields and k not in _HIDDEN)
    head = "".join(f"<th>{html.escape(f)}</th>" for f in fields)
    body = []
    for r in rows:
        cells = []
        for f in fields:
            value = r.get(f, "")
            text = isinstance(value, bool) or not isinstance(value, (int, float))
            if f == "name" and r.get("report"):
                link = html.escape(os.path.relpath(r["report"], out_dir))
                slide = html.escape(str(r.get("slide", "")))
                content = f'<a href="{link}" title="{slide}">{_cell(value)}</a>'
            else:
                content = _cell(value)
            cells.append(f'<td class="text">{content}</td>' if text else f"<td>{content}</td>")
        css = ' class="failed"' if r.get("status") not in (None, "ok") else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    failed = sum(r.get("status") not in (None, "ok") for r in rows)
    title = title or f"SMR: {len(rows)} slides" + (f", {failed} failed" if failed else "")
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>\n"
        "<p>Research use, not for diagnosis. The same figures: summary.csv, summary.json; each slide's "
        "report.html has its differential count.</p></body></html>\n"
    )
    return atomic_write_text(out_dir / SUMMARY_HTML, page)
