"""``report.html``: a self-contained page (inline CSS, plots and cell images as base64 PNG) per slide.

It shows who produced the count (the model's provenance) and that it is for research use only,
the differential count with a 95 % confidence interval on every percentage (and the reference
labels beside it, when the detections carry them), the M:E ratio and the blast percentage with
their intervals, the maturation index per lineage, the distribution of curve positions per lineage
(cells beyond either end of the curve apart), a reviewer's corrections (``smr recount``), a gallery
of the cells flagged for review, a gallery per class (blasts first, least confident cells first),
the detections that lay outside the slide, and a warning when fewer than 500 cells were counted.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_text
from .defaults import DEFAULT_FLAGGED, DEFAULT_PER_CLASS
from .model_info import RESEARCH_NOTICE, LineageInfo, ModelInfo
from .palette import class_colors, hex_color
from .results import BEFORE_START, BEYOND_END, DEFAULT_MARGIN, STAGE_GAP, CellResult, curve_end
from .summary import (
    CONFIDENCE,
    INTERVAL_METHOD,
    LOW_COUNT,
    CountDefinitions,
    DifferentialCount,
    format_interval,
)

__all__ = [
    "RESEARCH_NOTICE",
    "DEFAULT_PER_CLASS",
    "DEFAULT_FLAGGED",
    "GalleryCell",
    "Correction",
    "ReviewGalleries",
    "ReportData",
    "review_galleries",
    "render_report",
    "write_report",
    "plot_counts",
    "plot_positions",
]

log = logging.getLogger(__name__)

MAX_LISTED_OUTSIDE = 200
_THUMBNAIL = 128  # largest side of a gallery image, in pixels


@dataclass
class GalleryCell:
    """A cell in a gallery: its image (None when no slide was at hand), where it is, what SMR said."""

    id: str
    patch: np.ndarray | None  # RGB uint8
    class_name: str
    stage_estimate: str | None
    position: float | None
    reason: str  # why it is flagged for review; "" when it is not
    x: float | None = None  # centre in level-0 pixels
    y: float | None = None
    probability: float | None = None  # the SVM's probability of ``class_name``
    runner_up: str = ""
    reviewed_as: str | None = None  # the reviewer's class, when a reviewer changed it (smr recount)

    @property
    def end(self) -> str:
        return curve_end(self.position)


@dataclass(frozen=True)
class Correction:
    """One reviewer's change: the class SMR gave and the class the reviewer set (None: removed)."""

    id: str
    smr_class: str | None  # None: a cell the reviewer added
    reviewed_class: str | None  # None: a cell the reviewer removed (deleted or unclassified)
    x: float | None = None
    y: float | None = None
    probability: float | None = None


@dataclass
class ReviewGalleries:
    """The report's galleries: one per class (blasts first) and the cells flagged for review."""

    by_class: dict[str, list[GalleryCell]]  # in display order; each least confident first
    class_totals: dict[str, int]  # cells of each class (a gallery shows at most ``per_class``)
    flagged: list[GalleryCell]  # least confident first
    flagged_total: int


@dataclass
class ReportData:
    title: str
    info: ModelInfo
    count: DifferentialCount
    # per lineage: (positions, predicted classes) of the cells whose class is a stage of that lineage
    positions: Mapping[str, tuple[Sequence[float], Sequence[str]]]
    gallery: Sequence[GalleryCell] = ()  # flagged cells, when no ``galleries`` are given
    reference: DifferentialCount | None = None  # from the detections' own labels, when they have them
    outside_ids: Sequence[str] = ()
    facts: Mapping[str, str] = field(default_factory=dict)  # slide, server, geometry, timing: label -> value
    galleries: ReviewGalleries | None = None
    provenance: Mapping[str, Any] | None = None  # summary.json's "provenance"
    corrections: Sequence[Correction] = ()  # a reviewer's changes (smr recount)
    reference_label: str = "reference"  # what the reference count is ("reference", "SMR before review")
    count_label: str = "SMR"  # what the count is ("SMR", "after review")
    margin: float = DEFAULT_MARGIN  # the SVM probability margin that flags a cell for review


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _array_png(patch: np.ndarray, max_side: int = _THUMBNAIL) -> str:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(patch))
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def review_galleries(
    info: ModelInfo,
    cells: Mapping[str, CellResult],
    coordinates: Mapping[str, tuple[float, float]],
    crop: Callable[[str], np.ndarray] | None,
    *,
    per_class: int = DEFAULT_PER_CLASS,
    flagged: int = DEFAULT_FLAGGED,
    reviewed: Mapping[str, str] | None = None,
) -> ReviewGalleries:
    """Pick the cells of the galleries and crop their images (``crop(id)``; None: no images).

    Each class gallery holds the class's ``per_class`` least confident cells (lowest SVM
    probability first), blasts first, then the classes in the server's order; the flagged gallery
    holds the ``flagged`` least confident cells flagged for review. ``reviewed`` maps ids to the
    class a reviewer gave, for cells whose class a reviewer changed: they appear in the gallery of
    that class, marked.
    """
    if per_class < 0 or flagged < 0:
        raise ValueError(f"gallery sizes must be >= 0, got per_class={per_class}, flagged={flagged}")
    reviewed = reviewed or {}
    blasts = CountDefinitions.from_model(info).blasts
    order = [c for c in info.classes if c in blasts] + [c for c in info.classes if c not in blasts]
    item = _gallery_cells(cells, coordinates, crop, reviewed)
    members: dict[str, list[str]] = {c: [] for c in order}
    for cell_id, c in cells.items():
        members[reviewed.get(cell_id, c.class_name)].append(cell_id)
    by_class = {
        c: [item(i) for i in _least_confident(cells, members[c])[:per_class]] for c in order if members[c]
    }
    flagged_ids = [i for i, c in cells.items() if c.borderline]
    return ReviewGalleries(
        by_class=by_class,
        class_totals={c: len(members[c]) for c in order},
        flagged=[item(i) for i in _least_confident(cells, flagged_ids)[:flagged]],
        flagged_total=len(flagged_ids),
    )


def _gallery_cells(
    cells: Mapping[str, CellResult],
    coordinates: Mapping[str, tuple[float, float]],
    crop: Callable[[str], np.ndarray] | None,
    reviewed: Mapping[str, str],
) -> Callable[[str], GalleryCell]:
    """``item(id)``: the :class:`GalleryCell` of a cell, its image cropped once (a cell may be in two
    galleries); a cell whose image cannot be cropped goes without."""
    images: dict[str, np.ndarray | None] = {}

    def item(cell_id: str) -> GalleryCell:
        if cell_id not in images:
            images[cell_id] = None
            if crop is not None:
                try:
                    images[cell_id] = crop(cell_id)
                except Exception as exc:  # an image is a convenience: the gallery goes on without it
                    log.warning("no image for cell %s: %s", cell_id, exc)
        c = cells[cell_id]
        x, y = coordinates.get(cell_id, (None, None))
        return GalleryCell(
            cell_id, images[cell_id], c.class_name, c.stage_estimate, c.position, c.borderline_reason,
            x=x, y=y, probability=c.probability, runner_up=c.runner_up, reviewed_as=reviewed.get(cell_id),
        )  # fmt: skip

    return item


def _least_confident(cells: Mapping[str, CellResult], ids: list[str]) -> list[str]:
    """``ids`` by SVM probability, then margin, lowest first (ties by id)."""
    return sorted(ids, key=lambda i: (cells[i].probability, cells[i].margin, i))


def plot_counts(
    count: DifferentialCount,
    info: ModelInfo,
    reference: DifferentialCount | None = None,
    *,
    label: str = "SMR",
    reference_label: str = "reference labels",
) -> str:
    """Horizontal bars of the class percentages with their 95 % intervals (base64 PNG)."""
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
        xerr=_interval_errors(count, names),
        error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"},
        label=label,
    )
    if reference is not None:
        ax.barh(
            y - shift,
            [reference.percentages[c] for c in names],
            height=height,
            color="none",
            edgecolor="#333333",
            hatch="///",
            label=reference_label,
        )
        ax.legend(loc="lower right", fontsize=8)
    for yi, c in zip(y, names, strict=True):
        right = count.intervals[c][1] if count.intervals else count.percentages[c]
        ax.text(right + 0.3, yi + shift, f"{count.counts[c]}", va="center", fontsize=7)
    ax.set_yticks(y, [c.replace("_", " ") for c in names], fontsize=8)
    ax.set_xlabel(f"% of counted cells (bars: {round(100 * CONFIDENCE)} % confidence interval)")
    ax.set_title(f"Differential count ({count.total} cells)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _interval_errors(dc: DifferentialCount, names: list[str]) -> np.ndarray | None:
    """The error bars of the classes ``names``: how far each interval reaches below and above (None
    without intervals)."""
    if not dc.intervals:
        return None
    pct = np.array([dc.percentages[c] for c in names])
    low = np.array([dc.intervals[c][0] for c in names])
    high = np.array([dc.intervals[c][1] for c in names])
    return np.vstack([np.maximum(pct - low, 0), np.maximum(high - pct, 0)])


_END_BAR = 0.05  # width of the "before start" / "beyond end" bars, outside [0, 1]


def plot_positions(info: ModelInfo, lineage: str, positions: Sequence[float], classes: Sequence[str]) -> str:
    """Stacked histogram of curve positions, by predicted class, with the stage boundaries (base64 PNG).

    Cells the server projected onto an end of the curve (t clamped to 0 or 1) are drawn apart, as
    hatched bars left of 0 ("before start") and right of 1 ("beyond end").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    lin = next(lin for lin in info.lineages if lin.name == lineage)
    colors = class_colors(info)
    t = np.asarray(positions, dtype=np.float64)
    cls = np.asarray(classes)
    ends = np.array([curve_end(v) for v in t], dtype=object)
    inner = ends == ""
    bins = np.linspace(0.0, 1.0, 41)
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    data = [t[inner & (cls == c)] for c in lin.classes]
    ax.hist(
        data,
        bins=bins,
        stacked=True,
        color=[hex_color(colors[c]) for c in lin.classes],
        label=[c.replace("_", " ") for c in lin.classes],
    )
    past = _draw_curve_ends(ax, lin, colors, ends, cls)
    _draw_stages(ax, lin)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)  # room above the bars for their counts
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("position on the maturation curve (0 immature, 1 mature; hatched: past an end)")
    ax.set_ylabel("cells")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="SVM class", title_fontsize=7)
    ended = ", ".join(f"{n} {mark}" for mark, n in past.items() if n)
    title = f"{lineage.replace('_', ' ')}: {len(t)} cells" + (f" ({ended}, hatched)" if ended else "")
    ax.set_title(title, fontsize=10, loc="left", pad=30)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _draw_curve_ends(ax, lin: LineageInfo, colors, ends: np.ndarray, cls: np.ndarray) -> dict[str, int]:
    """The cells past either end of the curve as hatched stacked bars outside [0, 1], by class, with
    their totals above; the totals by end mark."""
    past = {}
    for mark, x in ((BEFORE_START, -0.035), (BEYOND_END, 1.035)):
        bottom = 0
        for c in lin.classes:
            n = int(np.sum((ends == mark) & (cls == c)))
            if n:
                ax.bar(x, n, width=_END_BAR, bottom=bottom, color=hex_color(colors[c]), hatch="///",
                       edgecolor="#444444", linewidth=0.5)  # fmt: skip
                bottom += n
        if bottom:
            ax.text(x, bottom, str(bottom), ha="center", va="bottom", fontsize=6)
        past[mark] = bottom
    return past


def _draw_stages(ax, lin: LineageInfo) -> None:
    """The stage boundaries and the curve's ends as vertical lines, the stages named on top, and the
    x axis from just before 0 to just past 1."""
    for b in lin.boundaries:
        ax.axvline(b, color="#444444", linestyle="--", linewidth=0.8)
    ax.axvline(0.0, color="#999999", linewidth=0.6)
    ax.axvline(1.0, color="#999999", linewidth=0.6)
    edges = [0.0, *lin.boundaries, 1.0]
    stages = ax.secondary_xaxis("top")
    stages.set_xticks([(lo + hi) / 2 for lo, hi in zip(edges[:-1], edges[1:], strict=True)])
    stages.set_xticklabels([c.replace("_", "\n") for c in lin.classes], fontsize=7)
    stages.tick_params(length=0)
    ax.set_xlim(-0.07, 1.07)
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;
 color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;
 padding-bottom:4px}h3{font-size:14px;margin:18px 0 6px}
.sub{color:#666;font-size:13px}
.notice{background:#fde8e8;border:1px solid #d9534f;color:#8a1f1b;padding:6px 12px;border-radius:4px;
 margin:10px 0;font-weight:600}
.prov{font-size:12px;color:#444;margin:6px 0}
.warn{background:#fff3cd;border:1px solid #e0b84c;padding:10px 14px;border-radius:4px;margin:14px 0}
.kpis{display:flex;gap:14px;flex-wrap:wrap;margin:14px 0}
.kpi{border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:140px}
.kpi .v{font-size:22px;font-weight:600}.kpi .ci{font-size:12px;color:#444}.kpi .l{font-size:12px;color:#666}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border-bottom:1px solid #e5e5e5;padding:4px 10px;text-align:right}
th{background:#f6f6f6}td.n,th.n{text-align:left}td.ci{color:#555;white-space:nowrap}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:middle}
.row{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.cell{width:150px;font-size:11px;border:1px solid #ddd;border-radius:4px;padding:4px;overflow-wrap:anywhere}
.cell.flag{border-color:#e0b84c}.cell.fix{border:2px solid #d9534f}
.cell img,.cell .noimg{width:142px;height:142px;image-rendering:auto;display:block}
.cell .noimg{background:#f3f3f3;color:#999;text-align:center;line-height:142px}
.fixed{color:#b52b27;font-weight:600}
.muted{color:#777;font-size:12px}
footer{margin-top:36px;border-top:1px solid #ddd;padding-top:10px;font-size:12px;color:#555}
img.plot{max-width:100%}
"""


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _ci_pct(interval: tuple[float, float] | None) -> str:
    """A fraction's interval in percent, ``low–high %``."""
    if interval is None:
        return "n/a"
    return format_interval((100 * interval[0], 100 * interval[1])).replace("-", "–") + " %"


def _ci(interval: tuple[float, float | None] | None, spec: str = ".1f") -> str:
    return format_interval(interval, spec).replace("-", "–").replace("inf", "∞")


_CI = f"{round(100 * CONFIDENCE)} % CI"


def _count_table(data: ReportData) -> str:
    info, count, ref = data.info, data.count, data.reference
    colors = class_colors(info)
    lineage_of = {c: lin.name for lin in info.lineages for c in lin.classes}
    head = f"<tr><th class=n>class</th><th class=n>lineage</th><th>cells</th><th>%</th><th>{_CI}</th>"
    label = html.escape(data.reference_label)
    if ref is not None:
        head += f"<th>{label} cells</th><th>{label} %</th><th>{label} {_CI}</th>"
    rows = [head + "</tr>"]
    for c in info.classes:
        cells = (
            f"<td class=n><span class=sw style='background:{hex_color(colors[c])}'></span>"
            f"{html.escape(c)}</td>"
            f"<td class=n>{html.escape(lineage_of.get(c, 'other'))}</td>"
            f"<td>{count.counts[c]}</td><td>{count.percentages[c]:.1f}</td>"
            f"<td class=ci>{_ci(count.intervals.get(c))}</td>"
        )
        if ref is not None:
            cells += (
                f"<td>{ref.counts[c]}</td><td>{ref.percentages[c]:.1f}</td>"
                f"<td class=ci>{_ci(ref.intervals.get(c))}</td>"
            )
        rows.append(f"<tr>{cells}</tr>")
    total = f"<tr><th class=n>total</th><th></th><th>{count.total}</th><th>100.0</th><th></th>"
    if ref is not None:
        total += f"<th>{ref.total}</th><th>100.0</th><th></th>"
    rows.append(total + "</tr>")
    return "<table id=differential-count>" + "".join(rows) + "</table>"


def _maturation_table(data: ReportData) -> str:
    rows = [
        "<tr><th class=n>lineage</th><th>cells</th><th class=n>immature stages</th>"
        f"<th>immature (class)</th><th>{_CI}</th><th>immature (curve)</th><th>{_CI}</th>"
        "<th>median position</th><th>before start</th><th>beyond end</th></tr>"
    ]
    for m in data.count.maturation.values():
        pct = lambda v: _fmt(None if v is None else 100 * v, ".1f", " %")  # noqa: E731
        rows.append(
            f"<tr><td class=n>{html.escape(m.lineage)}</td><td>{m.cells}</td>"
            f"<td class=n>{html.escape(', '.join(m.immature_classes))}</td>"
            f"<td>{pct(m.immature_by_class)}</td><td class=ci>{_ci_pct(m.immature_by_class_interval)}</td>"
            f"<td>{pct(m.immature_by_curve)}</td><td class=ci>{_ci_pct(m.immature_by_curve_interval)}</td>"
            f"<td>{_fmt(m.median_position, '.3f')}</td>"
            f"<td>{_fmt(m.before_start, 'd')}</td><td>{_fmt(m.beyond_end, 'd')}</td></tr>"
        )
    return "<table id=maturation-index>" + "".join(rows) + "</table>"


def _words(name: str) -> str:
    return name.replace("_", " ")


def _caption(g: GalleryCell) -> str:
    where = "" if g.x is None or g.y is None else f" <span class=muted>({g.x:.0f}, {g.y:.0f})</span>"
    prob = "" if g.probability is None else f" {g.probability:.2f}"
    position = "-" if g.position is None else f"t={g.position:.3f}" + (f" {g.end}" if g.end else "")
    text = f"<b>{html.escape(g.id)}</b>{where}<br>SVM: {html.escape(_words(g.class_name))}{prob}"
    if g.position is not None:
        text += f"<br>curve: {html.escape(_words(g.stage_estimate or '-'))} ({html.escape(position)})"
    if g.reviewed_as is not None:
        text += f"<br><span class=fixed>reviewer: {html.escape(_words(g.reviewed_as))}</span>"
    if g.reason:
        text += f"<br><span class=muted>{html.escape(g.reason)}</span>"
    return text


def _gallery(items: Sequence[GalleryCell], element_id: str, empty: str) -> str:
    if not items:
        return f"<p class=muted id={element_id}>{html.escape(empty)}</p>"
    out = []
    for g in items:
        kind = "cell fix" if g.reviewed_as is not None else ("cell flag" if g.reason else "cell")
        image = (
            "<div class=noimg>no image</div>"
            if g.patch is None
            else f"<img alt='cell {html.escape(g.id)}' src='data:image/png;base64,{_array_png(g.patch)}'>"
        )
        out.append(f"<div class='{kind}' data-id='{html.escape(g.id)}'>{image}{_caption(g)}</div>")
    return f"<div class=gallery id={element_id}>" + "".join(out) + "</div>"


def _review_rule(margin: float) -> str:
    return (
        f"A cell is flagged for review when the SVM is unsure (its two most probable classes differ by "
        f"less than {margin:g} in probability) or when its position on the lineage's curve lies "
        f"{STAGE_GAP} or more stages from its class."
    )


_PROVENANCE_LABELS = (
    ("run_id", "training run"),
    ("training_data", "training data"),
    ("training_images", "training images"),
    ("val_macro_f1", "validation macro F1"),
    ("model_microns_per_pixel", "model scale (µm/px)"),
    ("manifest_sha256", "model repository manifest (sha256)"),
    ("smr_version", "SMR version"),
    ("triton_version", "Triton version"),
)


def _value(v: Any) -> str:
    if v is None or v == "":
        return "unknown"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _provenance_line(prov: Mapping[str, Any] | None) -> str:
    if not prov:
        return "<div class=prov id=provenance-line>Model provenance unknown (not recorded).</div>"
    sha = prov.get("manifest_sha256")
    parts = [
        f"model run {_value(prov.get('run_id'))}",
        f"trained on {_value(prov.get('training_data'))} ({_value(prov.get('training_images'))} images)",
        f"validation macro F1 {_value(prov.get('val_macro_f1'))}",
        f"manifest {sha[:12] if isinstance(sha, str) and sha else 'unknown'}",
        f"SMR {_value(prov.get('smr_version'))}",
        f"Triton {_value(prov.get('triton_version'))}",
    ]
    return "<div class=prov id=provenance-line>" + html.escape(" · ".join(parts)) + "</div>"


def _provenance_table(prov: Mapping[str, Any] | None) -> str:
    if not prov:
        return "<p class=muted id=provenance>No provenance was recorded with this run.</p>"
    rows = [(label, _value(prov.get(key))) for key, label in _PROVENANCE_LABELS]
    known = {k for k, _ in _PROVENANCE_LABELS} | {"notice"}
    rows += [(str(k), _value(v)) for k, v in prov.items() if k not in known]
    return "<table id=provenance>" + _key_value_rows(rows) + "</table>"


def _key_value_rows(rows: Iterable[tuple[str, str]]) -> str:
    """Table rows of a label and its value."""
    return "".join(
        f"<tr><td class=n>{html.escape(k)}</td><td class=n>{html.escape(v)}</td></tr>" for k, v in rows
    )


def _notices(prov: Mapping[str, Any] | None) -> list[str]:
    extra = str((prov or {}).get("notice") or "").strip()
    return [RESEARCH_NOTICE] + ([extra] if extra and extra != RESEARCH_NOTICE else [])


def _corrections(data: ReportData) -> str:
    rows = ["<tr><th class=n>cell</th><th>x</th><th>y</th><th class=n>SMR</th><th>probability</th>"
            "<th class=n>reviewer</th></tr>"]  # fmt: skip
    for c in data.corrections:
        rows.append(
            f"<tr><td class=n>{html.escape(c.id)}</td><td>{_fmt(c.x, '.0f')}</td><td>{_fmt(c.y, '.0f')}</td>"
            f"<td class=n>{html.escape(_words(c.smr_class or '(added by the reviewer)'))}</td>"
            f"<td>{_fmt(c.probability, '.2f')}</td>"
            f"<td class='n fixed'>{html.escape(_words(c.reviewed_class or '(removed: not counted)'))}"
            "</td></tr>"
        )
    return "<table id=corrections>" + "".join(rows) + "</table>"


def render_report(data: ReportData) -> str:
    """The report as one HTML string: its sections in turn, one part per line."""
    notices = _notices(data.provenance)
    parts = [
        *_header(data, notices),
        *_low_count_warning(data.count),
        _kpis(data),
        *_count_section(data),
        *_maturation_section(data),
        *_corrections_section(data),
        *_flagged_section(data),
        *_class_galleries_section(data.galleries),
        *_outside_section(data.outside_ids),
        *_facts_section(data.facts),
        "<h2>Provenance</h2>",
        _provenance_table(data.provenance),
        "<footer id=footer>" + html.escape(" ".join(notices)) + "</footer>",
        "</body></html>\n",
    ]
    return "\n".join(parts)


def _header(data: ReportData, notices: list[str]) -> list[str]:
    """The page's head, title, date, provenance line and research notice."""
    return [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(data.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(data.title)}</h1>",
        f"<div class=sub>SMR differential count &middot; written "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</div>",
        _provenance_line(data.provenance),
        "<div class=notice id=research-notice>" + html.escape(" ".join(notices)) + "</div>",
    ]


def _low_count_warning(count: DifferentialCount) -> list[str]:
    """The warning for a count of fewer than :data:`LOW_COUNT` cells (none otherwise)."""
    if not count.low_count:
        return []
    return [
        f"<div class=warn id=low-count-warning><b>Only {count.total} cells were counted.</b> "
        f"A differential count needs at least {LOW_COUNT} cells to be reliable; "
        "read the percentages with care.</div>"
    ]


def _kpis(data: ReportData) -> str:
    """The key figures: cells, M:E ratio, blasts, flagged cells, corrections, detections outside."""
    count = data.count
    me = _fmt(count.me_ratio, ".2f")
    kpis = [
        (str(count.total), "", "cells counted"),
        (
            me + (":1" if count.me_ratio is not None else ""),
            "" if count.me_interval is None else f"{_CI} {_ci(count.me_interval, '.2f')}",
            f"M:E ratio ({count.myeloid} : {count.erythroid})",
        ),
        (
            _fmt(count.blast_percentage, ".1f", " %"),
            "" if count.blast_interval is None else f"{_CI} {_ci(count.blast_interval)} %",
            f"blasts ({count.blasts} cells)",
        ),
        (str(count.borderline), "", "cells flagged for review"),
        (str(len(data.outside_ids)), "", "detections outside the slide"),
    ]
    if data.corrections:
        kpis.insert(4, (str(len(data.corrections)), "", "reviewer's corrections"))
    return (
        "<div class=kpis id=kpis>"
        + "".join(
            f"<div class=kpi><div class=v>{html.escape(v)}</div>"
            + (f"<div class=ci>{html.escape(ci)}</div>" if ci else "")
            + f"<div class=l>{html.escape(label)}</div></div>"
            for v, ci, label in kpis
        )
        + "</div>"
    )


def _count_section(data: ReportData) -> list[str]:
    """The differential count: its table, its plot, how the intervals are made and what counts as what."""
    count = data.count
    ref_label = "reference labels" if data.reference_label == "reference" else data.reference_label
    bars = plot_counts(count, data.info, data.reference, label=data.count_label, reference_label=ref_label)
    defs = count.definitions
    return [
        "<h2>Differential count</h2><div class=row>",
        _count_table(data),
        f"<img class=plot id=count-plot alt='differential count' src='data:image/png;base64,{bars}'>",
        "</div>",
        f"<p class=muted id=interval-method>Percentages are of all counted cells. {_CI}: the "
        f"{round(100 * CONFIDENCE)} % {html.escape(INTERVAL_METHOD)} confidence interval of each share "
        "(Rümke's table); the M:E ratio's is that of the myeloid share among myeloid and erythroid "
        "cells, as a ratio.</p>",
        "<p class=muted>M:E counts as myeloid: "
        + html.escape(", ".join(defs.myeloid) or "none")
        + "; as erythroid: "
        + html.escape(", ".join(defs.erythroid) or "none")
        + ". Blasts: "
        + html.escape(", ".join(defs.blasts) or "none")
        + ".</p>",
    ]


def _maturation_section(data: ReportData) -> list[str]:
    """The maturation index per lineage, what its columns mean, and the positions plot per lineage."""
    parts = [
        "<h2>Maturation</h2>",
        _maturation_table(data),
        "<p class=muted id=share-by-class><b>By class:</b> the share of the lineage's cells whose SVM "
        "class is one of its immature stages (listed).</p>"
        "<p class=muted id=share-by-curve><b>By curve:</b> the share of the lineage's cells whose "
        "position on the lineage's maturation curve lies before the boundary between its immature and "
        "mature stages, whatever their class.</p>"
        "<p class=muted id=curve-ends><b>Before start / beyond end:</b> cells whose embedding projects "
        "past the curve's immature or mature end (the server clamps their position to 0 or 1); they are "
        "drawn apart, hatched, not piled up at the ends.</p>",
    ]
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
    return parts


def _corrections_section(data: ReportData) -> list[str]:
    """A reviewer's corrections (none without a review)."""
    if not data.corrections:
        return []
    return [
        f"<h2>Reviewer's corrections ({len(data.corrections)})</h2>",
        "<p class=muted>Cells whose class a reviewer changed; the count above uses the reviewer's "
        f"classes, the '{html.escape(data.reference_label)}' columns SMR's.</p>",
        _corrections(data),
    ]


def _flagged_section(data: ReportData) -> list[str]:
    """The gallery of the cells flagged for review, with the rule that flags them."""
    galleries = data.galleries
    flagged = list(galleries.flagged) if galleries is not None else list(data.gallery)
    flagged_total = galleries.flagged_total if galleries is not None else data.count.borderline
    return [
        f"<h2>Flagged for review ({flagged_total})</h2>",
        f"<p class=muted>{html.escape(_review_rule(data.margin))} Least confident first (lowest SVM "
        f"probability); showing {len(flagged)}.</p>",
        _gallery(flagged, "borderline-gallery", "No cells are flagged for review."),
    ]


def _class_galleries_section(galleries: ReviewGalleries | None) -> list[str]:
    """A gallery per class (none without ``galleries``)."""
    if galleries is None:
        return []
    parts = [
        "<h2>Cells by class</h2>",
        "<p class=muted>Blasts first, then every class; in each, the least confident cells first "
        "(lowest SVM probability), with id, centre (x, y in level-0 pixels), probability and curve "
        "position. Reclassify in QuPath (cells.geojson) and run <code>smr recount</code>.</p>",
    ]
    for c, items in galleries.by_class.items():
        total = galleries.class_totals.get(c, len(items))
        parts.append(
            f"<h3 id='class-{html.escape(c)}'>{html.escape(_words(c))} ({total} cells"
            + (f", showing the {len(items)} least confident" if len(items) < total else "")
            + ")</h3>"
        )
        parts.append(_gallery(items, f"gallery-{html.escape(c)}", "none"))
    return parts


def _outside_section(outside_ids: Sequence[str]) -> list[str]:
    """The detections outside the slide, the first :data:`MAX_LISTED_OUTSIDE` listed (none: nothing)."""
    if not outside_ids:
        return []
    listed = ", ".join(html.escape(i) for i in outside_ids[:MAX_LISTED_OUTSIDE])
    more = len(outside_ids) - MAX_LISTED_OUTSIDE
    return [
        f"<h2>Detections outside the slide ({len(outside_ids)})</h2>",
        f"<p id=outside-ids>{listed}{f' and {more} more' if more > 0 else ''}</p>",
    ]


def _facts_section(facts: Mapping[str, str]) -> list[str]:
    """The run's facts (slide, server, geometry, timing) as a table (none: nothing)."""
    if not facts:
        return []
    return ["<h2>Run</h2><table id=facts>" + _key_value_rows(facts.items()) + "</table>"]


def write_report(path: str | Path, data: ReportData) -> Path:
    """Render and write the report atomically."""
    return atomic_write_text(path, render_report(data))
