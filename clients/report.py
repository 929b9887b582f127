"""``report.html``: a self-contained page (inline CSS, plots and cell images as base64 PNG) per slide.

It shows the differential count (counts and percentages, against the reference labels when the
detections carry them), the M:E ratio, the blast percentage, the maturation index per lineage,
the distribution of curve positions per lineage, a gallery of borderline cells, the detections
that lay outside the slide, and a warning when fewer than 500 cells were counted.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text
from .model_info import ModelInfo
from .palette import class_colors, hex_color
from .summary import LOW_COUNT, DifferentialCount

__all__ = ["GalleryCell", "ReportData", "render_report", "write_report", "plot_counts", "plot_positions"]

MAX_LISTED_OUTSIDE = 200


@dataclass
class GalleryCell:
    """A borderline cell for the gallery."""

    id: str
    patch: np.ndarray  # RGB uint8
    class_name: str
    stage_estimate: str | None
    position: float | None
    reason: str


@dataclass
class ReportData:
    title: str
    info: ModelInfo
    count: DifferentialCount
    # per lineage: (positions, predicted classes) of the cells whose class is a stage of that lineage
    positions: Mapping[str, tuple[Sequence[float], Sequence[str]]]
    gallery: Sequence[GalleryCell] = ()
    reference: DifferentialCount | None = None  # from the detections' own labels, when they have them
    outside_ids: Sequence[str] = ()
    facts: Mapping[str, str] = field(default_factory=dict)  # slide, server, geometry, timing: label -> value


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _array_png(patch: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(patch).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_counts(count: DifferentialCount, info: ModelInfo, reference: DifferentialCount | None = None) -> str:
    """Horizontal bars of the class percentages (base64 PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = class_colors(info)
    names = list(info.classes)[::-1]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * len(names) + 1.0))
    height = 0.4 if reference is not None else 0.8
    shift = height / 2 if reference is not None else 0.0
    ax.barh(
        y + shift,
        [count.percentages[c] for c in names],
        height=height,
        color=[hex_color(colors[c]) for c in names],
        label="SMR",
    )
    if reference is not None:
        ax.barh(
            y - shift,
            [reference.percentages[c] for c in names],
            height=height,
            color="none",
            edgecolor="#333333",
            hatch="///",
            label="reference labels",
        )
        ax.legend(loc="lower right", fontsize=8)
    for yi, c in zip(y, names, strict=True):
        ax.text(count.percentages[c] + 0.3, yi + shift, f"{count.counts[c]}", va="center", fontsize=7)
    ax.set_yticks(y, [c.replace("_", " ") for c in names], fontsize=8)
    ax.set_xlabel("% of counted cells")
    ax.set_title(f"Differential count ({count.total} cells)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def plot_positions(info: ModelInfo, lineage: str, positions: Sequence[float], classes: Sequence[str]) -> str:
    """Stacked histogram of curve positions, by predicted class, with the stage boundaries (base64 PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    lin = next(lin for lin in info.lineages if lin.name == lineage)
    colors = class_colors(info)
    t = np.asarray(positions, dtype=np.float64)
    cls = np.asarray(classes)
    bins = np.linspace(0.0, 1.0, 41)
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    data = [t[cls == c] for c in lin.classes]
    ax.hist(
        data,
        bins=bins,
        stacked=True,
        color=[hex_color(colors[c]) for c in lin.classes],
        label=[c.replace("_", " ") for c in lin.classes],
    )
    for b in lin.boundaries:
        ax.axvline(b, color="#444444", linestyle="--", linewidth=0.8)
    edges = [0.0, *lin.boundaries, 1.0]
    stages = ax.secondary_xaxis("top")
    stages.set_xticks([(lo + hi) / 2 for lo, hi in zip(edges[:-1], edges[1:], strict=True)])
    stages.set_xticklabels([c.replace("_", "\n") for c in lin.classes], fontsize=7)
    stages.tick_params(length=0)
    ax.set_xlim(0, 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("position on the maturation curve (0 immature, 1 mature)")
    ax.set_ylabel("cells")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="SVM class", title_fontsize=7)
    ax.set_title(f"{lineage.replace('_', ' ')}: {len(t)} cells", fontsize=10, loc="left", pad=30)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;
 color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;
 padding-bottom:4px}
.sub{color:#666;font-size:13px}
.warn{background:#fff3cd;border:1px solid #e0b84c;padding:10px 14px;border-radius:4px;margin:14px 0}
.kpis{display:flex;gap:14px;flex-wrap:wrap;margin:14px 0}
.kpi{border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:140px}
.kpi .v{font-size:22px;font-weight:600}.kpi .l{font-size:12px;color:#666}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border-bottom:1px solid #e5e5e5;padding:4px 10px;text-align:right}
th{background:#f6f6f6}td.n,th.n{text-align:left}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:middle}
.row{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.cell{width:150px;font-size:11px;border:1px solid #ddd;border-radius:4px;padding:4px;overflow-wrap:anywhere}
.cell img{width:142px;height:142px;image-rendering:auto;display:block}
.muted{color:#777;font-size:12px}
img.plot{max-width:100%}
"""


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _count_table(data: ReportData) -> str:
    info, count, ref = data.info, data.count, data.reference
    colors = class_colors(info)
    lineage_of = {c: lin.name for lin in info.lineages for c in lin.classes}
    head = "<tr><th class=n>class</th><th class=n>lineage</th><th>cells</th><th>%</th>"
    if ref is not None:
        head += "<th>reference cells</th><th>reference %</th>"
    rows = [head + "</tr>"]
    for c in info.classes:
        cells = (
            f"<td class=n><span class=sw style='background:{hex_color(colors[c])}'></span>"
            f"{html.escape(c)}</td>"
            f"<td class=n>{html.escape(lineage_of.get(c, 'other'))}</td>"
            f"<td>{count.counts[c]}</td><td>{count.percentages[c]:.1f}</td>"
        )
        if ref is not None:
            cells += f"<td>{ref.counts[c]}</td><td>{ref.percentages[c]:.1f}</td>"
        rows.append(f"<tr>{cells}</tr>")
    total = f"<tr><th class=n>total</th><th></th><th>{count.total}</th><th>100.0</th>"
    if ref is not None:
        total += f"<th>{ref.total}</th><th>100.0</th>"
    rows.append(total + "</tr>")
    return "<table id=differential-count>" + "".join(rows) + "</table>"


def _maturation_table(data: ReportData) -> str:
    rows = [
        "<tr><th class=n>lineage</th><th>cells</th><th class=n>immature stages</th><th>immature (class)</th>"
        "<th>mature (class)</th><th>immature (curve)</th><th>mature (curve)</th><th>median position</th></tr>"
    ]
    for m in data.count.maturation.values():
        pct = lambda v: _fmt(None if v is None else 100 * v, ".1f", " %")  # noqa: E731
        rows.append(
            f"<tr><td class=n>{html.escape(m.lineage)}</td><td>{m.cells}</td>"
            f"<td class=n>{html.escape(', '.join(m.immature_classes))}</td>"
            f"<td>{pct(m.immature_by_class)}</td><td>{pct(m.mature_by_class)}</td>"
            f"<td>{pct(m.immature_by_curve)}</td><td>{pct(m.mature_by_curve)}</td>"
            f"<td>{_fmt(m.median_position, '.3f')}</td></tr>"
        )
    return "<table id=maturation-index>" + "".join(rows) + "</table>"


def _words(name: str) -> str:
    return name.replace("_", " ")


def _gallery(data: ReportData) -> str:
    if not data.gallery:
        return "<p class=muted>No borderline cells.</p>"
    items = []
    for g in data.gallery:
        caption = (
            f"<b>{html.escape(g.id)}</b><br>SVM: {html.escape(_words(g.class_name))}<br>"
            f"curve: {html.escape(_words(g.stage_estimate or '-'))} (t={_fmt(g.position, '.3f')})<br>"
            f"<span class=muted>{html.escape(_words(g.reason))}</span>"
        )
        items.append(
            f"<div class=cell><img alt='cell {html.escape(g.id)}' src='data:image/png;base64,"
            f"{_array_png(g.patch)}'>{caption}</div>"
        )
    return "<div class=gallery id=borderline-gallery>" + "".join(items) + "</div>"


def render_report(data: ReportData) -> str:
    """The report as one HTML string."""
    count = data.count
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(data.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(data.title)}</h1>",
        f"<div class=sub>SMR differential count &middot; written "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</div>",
    ]
    if count.low_count:
        parts.append(
            f"<div class=warn id=low-count-warning><b>Only {count.total} cells were counted.</b> "
            f"A differential count needs at least {LOW_COUNT} cells to be reliable; "
            "read the percentages with care.</div>"
        )
    me = _fmt(count.me_ratio, ".2f")
    kpis = [
        (str(count.total), "cells counted"),
        (
            me + (":1" if count.me_ratio is not None else ""),
            f"M:E ratio ({count.myeloid} : {count.erythroid})",
        ),
        (_fmt(count.blast_percentage, ".1f", " %"), f"blasts ({count.blasts} cells)"),
        (str(count.borderline), "borderline cells"),
        (str(len(data.outside_ids)), "detections outside the slide"),
    ]
    parts.append(
        "<div class=kpis>"
        + "".join(
            f"<div class=kpi><div class=v>{html.escape(v)}</div><div class=l>{html.escape(label)}</div></div>"
            for v, label in kpis
        )
        + "</div>"
    )
    parts.append("<h2>Differential count</h2><div class=row>")
    parts.append(_count_table(data))
    parts.append(
        f"<img class=plot id=count-plot alt='differential count' "
        f"src='data:image/png;base64,{plot_counts(count, data.info, data.reference)}'>"
    )
    parts.append("</div>")
    defs = count.definitions
    parts.append(
        "<p class=muted>M:E counts as myeloid: "
        + html.escape(", ".join(defs.myeloid) or "none")
        + "; as erythroid: "
        + html.escape(", ".join(defs.erythroid) or "none")
        + ". Blasts: "
        + html.escape(", ".join(defs.blasts) or "none")
        + ".</p>"
    )
    parts.append("<h2>Maturation</h2>")
    parts.append(_maturation_table(data))
    parts.append(
        "<p class=muted>Immature vs mature share of each lineage's cells, by SVM class and by the position "
        "on the lineage's maturation curve (before or after the boundary between the two halves of its "
        "stages).</p>"
    )
    for lin in data.info.lineages:
        t, cls = data.positions.get(lin.name, ((), ()))
        if len(t):
            img = plot_positions(data.info, lin.name, t, cls)
            parts.append(
                f"<img class=plot id='positions-{html.escape(lin.name)}' "
                f"alt='positions on the {html.escape(lin.name)} curve' src='data:image/png;base64,{img}'>"
            )
        else:
            parts.append(f"<p class=muted>No {html.escape(lin.name)} cells.</p>")
    parts.append(f"<h2>Borderline cells ({count.borderline})</h2>")
    parts.append(
        "<p class=muted>Cells whose curve position lies near a boundary between two stages, or whose curve "
        f"stage disagrees with the SVM class. Showing {len(data.gallery)}.</p>"
    )
    parts.append(_gallery(data))
    if data.outside_ids:
        listed = ", ".join(html.escape(i) for i in data.outside_ids[:MAX_LISTED_OUTSIDE])
        more = len(data.outside_ids) - MAX_LISTED_OUTSIDE
        parts.append(f"<h2>Detections outside the slide ({len(data.outside_ids)})</h2>")
        parts.append(f"<p id=outside-ids>{listed}{f' and {more} more' if more > 0 else ''}</p>")
    if data.facts:
        parts.append(
            "<h2>Run</h2><table>"
            + "".join(
                f"<tr><td class=n>{html.escape(k)}</td><td class=n>{html.escape(v)}</td></tr>"
                for k, v in data.facts.items()
            )
            + "</table>"
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(path: str | Path, data: ReportData) -> Path:
    """Render and write the report atomically."""
    return atomic_write_text(path, render_report(data))
