"""The differential count of a slide: counts and shares per class, M:E ratio, blasts, maturation indices.

Which classes are myeloid, erythroid or blasts is read from the served class and lineage names
(:meth:`CountDefinitions.from_model`), so other class sets work without code changes:

- erythroid: the stages of every lineage whose name mentions "erythro";
- myeloid: the stages of every lineage whose name mentions "granulo", "myelo" or "neutro", plus
  eosinophils and basophils (the usual M:E convention; monocytes and lymphocytes count in neither);
- blasts: classes named "blast", "myeloblast" or "BLA";
- immature stages of a lineage: its first half (granulopoiesis: blast, promyelocyte, myelocyte,
  the dividing pool; erythropoiesis: proerythroblast, basophilic erythroblast).

The maturation index of a lineage is the share of its cells in the immature and in the mature
half, counted by class (the SVM) and by curve position (the SMR regression: positions before or
after the stage boundary that separates the halves), with the median position on the curve and
the cells that lie beyond either end of the curve.

Every share carries a 95 % confidence interval: the exact binomial (Clopper–Pearson) interval,
the one behind Rümke's table, conservative (it covers the true share at least 95 % of the time
for every count) and well defined at 0 and at n cells, where a 500-cell differential needs it
most. The M:E ratio's interval is the same interval of the myeloid share among the M + E cells,
mapped through p / (1 - p) (conditional on M + E, the myeloid count is binomial).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .model_info import LineageInfo, ModelInfo
from .results import CellResult, curve_end

__all__ = [
    "CONFIDENCE",
    "INTERVAL_METHOD",
    "LOW_COUNT",
    "CountDefinitions",
    "MaturationIndex",
    "DifferentialCount",
    "differential_count",
    "count_cells",
    "ReviewYield",
    "review_yield",
    "proportion_interval",
    "ratio_interval",
    "format_count",
    "format_interval",
    "count_row",
    "headline",
    "maturation_line",
    "json_ready",
]

#: Fewer scored cells than this and a differential count is statistically weak (common practice: 500).
LOW_COUNT = 500
#: Coverage of every interval SMR reports.
CONFIDENCE = 0.95
#: How the intervals are computed (stated in the report and summary.json).
INTERVAL_METHOD = "Clopper-Pearson (exact binomial)"


def proportion_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Clopper–Pearson interval of a share ``k`` of ``n`` (as fractions); None when ``n`` is 0.

    The bounds are the beta quantiles ``B(a/2; k, n-k+1)`` and ``B(1-a/2; k+1, n-k)``, with 0 at
    ``k = 0`` and 1 at ``k = n``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None
    from scipy.stats import beta

    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def ratio_interval(a: int, b: int, confidence: float = CONFIDENCE) -> tuple[float, float | None] | None:
    """Interval of the ratio ``a : b`` of two counts (the M:E ratio); None when both are 0.

    Conditional on ``a + b``, ``a`` is binomial with p = ratio / (1 + ratio); the Clopper–Pearson
    interval of p, mapped through p / (1 - p), is the ratio's. The upper bound is None (unbounded)
    when ``b`` is 0.
    """
    share = proportion_interval(a, a + b, confidence)
    if share is None:
        return None
    low, high = share
    return low / (1.0 - low), (None if high >= 1.0 else high / (1.0 - high))


_BLAST_NAMES = {"blast", "blasts", "myeloblast", "myeloblasts", "bla"}


@dataclass(frozen=True)
class CountDefinitions:
    """Which classes count as myeloid, erythroid and blasts, and where each lineage's immature half ends."""

    myeloid: tuple[str, ...]
    erythroid: tuple[str, ...]
    blasts: tuple[str, ...]
    immature_stages: dict[str, int] = field(default_factory=dict)  # lineage -> number of immature stages

    @classmethod
    def from_model(cls, info: ModelInfo) -> CountDefinitions:
        erythroid: list[str] = []
        myeloid: list[str] = []
        for lin in info.lineages:
            name = lin.name.lower()
            if "erythro" in name:
                erythroid.extend(lin.classes)
            elif any(k in name for k in ("granulo", "myelo", "neutro")):
                myeloid.extend(lin.classes)
        lineage_classes = {c for lin in info.lineages for c in lin.classes}
        for c in info.classes:
            if c not in lineage_classes and any(k in c.lower() for k in ("eosinophil", "basophil")):
                myeloid.append(c)
        blasts = tuple(c for c in info.classes if c.lower() in _BLAST_NAMES)
        immature = {lin.name: len(lin.classes) // 2 for lin in info.lineages}
        return cls(tuple(myeloid), tuple(erythroid), blasts, immature)


@dataclass(frozen=True)
class MaturationIndex:
    """Immature vs mature share of one lineage's cells (shares as fractions, intervals likewise)."""

    lineage: str
    cells: int
    immature_classes: tuple[str, ...]
    immature_by_class: float | None  # share of the lineage's cells with an immature class (SVM)
    mature_by_class: float | None
    immature_by_curve: float | None  # share with a position before the halves' boundary (SMR)
    mature_by_curve: float | None
    median_position: float | None
    split_position: float | None = None  # the boundary between the halves on the curve (t)
    immature_by_class_interval: tuple[float, float] | None = None
    immature_by_curve_interval: tuple[float, float] | None = None
    before_start: int | None = None  # cells projected onto the immature end (t = 0): before the curve
    beyond_end: int | None = None  # cells projected onto the mature end (t = 1): beyond the curve

    @property
    def mature_by_class_interval(self) -> tuple[float, float] | None:
        i = self.immature_by_class_interval
        return None if i is None else (1.0 - i[1], 1.0 - i[0])

    @property
    def mature_by_curve_interval(self) -> tuple[float, float] | None:
        i = self.immature_by_curve_interval
        return None if i is None else (1.0 - i[1], 1.0 - i[0])


@dataclass(frozen=True)
class DifferentialCount:
    """The differential count of one slide (or any set of cells)."""

    total: int
    counts: dict[str, int]  # every served class, in the server's order (zeros included)
    percentages: dict[str, float]  # of all counted cells
    myeloid: int
    erythroid: int
    me_ratio: float | None  # myeloid / erythroid; None without erythroid cells
    blasts: int
    blast_percentage: float | None  # of all counted cells; None when nothing was counted
    maturation: dict[str, MaturationIndex]
    borderline: int
    definitions: CountDefinitions
    # 95 % intervals (CONFIDENCE, INTERVAL_METHOD), in the unit of the figure they belong to
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # per class, in %
    blast_interval: tuple[float, float] | None = None  # in %
    me_interval: tuple[float, float | None] | None = None  # upper None: unbounded (no erythroid cells)

    @property
    def low_count(self) -> bool:
        return self.total < LOW_COUNT

    def to_dict(self) -> dict:
        d = asdict(self)
        d["low_count"] = self.low_count
        d["confidence"] = CONFIDENCE
        d["interval_method"] = INTERVAL_METHOD
        for name, m in self.maturation.items():
            d["maturation"][name]["mature_by_class_interval"] = m.mature_by_class_interval
            d["maturation"][name]["mature_by_curve_interval"] = m.mature_by_curve_interval
        return json_ready(d)


@dataclass(frozen=True)
class ReviewYield:
    """How well the review flags find the errors, on cells whose true class is known."""

    cells: int
    flagged: int  # cells flagged for review
    misclassified: int  # cells whose class differs from the true one
    misclassified_flagged: int  # misclassified cells among the flagged

    @property
    def flagged_share(self) -> float | None:
        return _share(self.flagged, self.cells)

    @property
    def errors_found(self) -> float | None:
        """The share of the misclassified cells that are flagged (None without errors)."""
        return _share(self.misclassified_flagged, self.misclassified)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flagged_share": self.flagged_share, "errors_found": self.errors_found}

    def line(self) -> str:
        found = "n/a" if self.errors_found is None else f"{100 * self.errors_found:.0f} %"
        share = 100 * (self.flagged_share or 0.0)
        return (
            f"{self.flagged} of {self.cells} cells flagged for review ({share:.1f} %), "
            f"holding {self.misclassified_flagged} of the {self.misclassified} misclassified ({found})"
        )


def review_yield(classes: Sequence[str], flagged: Sequence[bool], truth: Sequence[str]) -> ReviewYield:
    """Count the flagged cells and the misclassified ones they hold (``truth``: the true classes)."""
    if not len(classes) == len(flagged) == len(truth):
        raise ValueError(f"lengths differ: {len(classes)} classes, {len(flagged)} flags, {len(truth)} truths")
    wrong = [c != t for c, t in zip(classes, truth, strict=True)]
    return ReviewYield(
        cells=len(classes),
        flagged=sum(map(bool, flagged)),
        misclassified=sum(wrong),
        misclassified_flagged=sum(w and bool(f) for w, f in zip(wrong, flagged, strict=True)),
    )


def json_ready(value):
    """Tuples as lists, recursively (what ``json.dumps`` writes anyway), so that dicts compare equal."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def _percent(interval: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if interval is None else (100.0 * interval[0], 100.0 * interval[1])


def _share(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def differential_count(
    info: ModelInfo,
    classes: Sequence[str],
    *,
    positions: Sequence[float | None] | None = None,
    borderline: Sequence[bool] | None = None,
    definitions: CountDefinitions | None = None,
) -> DifferentialCount:
    """Count cells given their classes (and, optionally, their positions on their own lineage's curve).

    Works for predictions and for reference labels alike (then without positions).
    """
    defs = definitions or CountDefinitions.from_model(info)
    unknown = sorted(set(classes) - set(info.classes))
    if unknown:
        raise ValueError(f"classes not served by the model: {unknown}; served: {', '.join(info.classes)}")
    if positions is not None and len(positions) != len(classes):
        raise ValueError(f"{len(positions)} positions for {len(classes)} cells")
    tally = Counter(classes)
    total = len(classes)
    counts = {c: tally.get(c, 0) for c in info.classes}
    percentages = {c: (100.0 * n / total if total else 0.0) for c, n in counts.items()}
    intervals = {c: _percent(proportion_interval(n, total)) for c, n in counts.items()} if total else {}
    myeloid = sum(counts[c] for c in defs.myeloid)
    erythroid = sum(counts[c] for c in defs.erythroid)
    blasts = sum(counts[c] for c in defs.blasts)
    return DifferentialCount(
        total=total,
        counts=counts,
        percentages=percentages,
        myeloid=myeloid,
        erythroid=erythroid,
        me_ratio=None if erythroid == 0 else myeloid / erythroid,
        blasts=blasts,
        blast_percentage=None if total == 0 else 100.0 * blasts / total,
        maturation={lin.name: _maturation_index(lin, defs, classes, positions) for lin in info.lineages},
        borderline=int(sum(bool(b) for b in borderline)) if borderline is not None else 0,
        definitions=defs,
        intervals=intervals,
        blast_interval=_percent(proportion_interval(blasts, total)),
        me_interval=ratio_interval(myeloid, erythroid),
    )


def count_cells(info: ModelInfo, cells: Sequence[CellResult]) -> DifferentialCount:
    """The differential count of scored cells: their classes, curve positions and review flags."""
    return differential_count(
        info,
        [c.class_name for c in cells],
        positions=[c.position for c in cells],
        borderline=[c.borderline for c in cells],
    )


def _maturation_index(
    lin: LineageInfo,
    defs: CountDefinitions,
    classes: Sequence[str],
    positions: Sequence[float | None] | None,
) -> MaturationIndex:
    """The immature and mature shares of the cells of lineage ``lin``, by class and by curve position."""
    k = defs.immature_stages.get(lin.name, len(lin.classes) // 2)
    immature = lin.classes[:k]
    members = [i for i, c in enumerate(classes) if c in lin.classes]
    n = len(members)
    n_imm = sum(1 for i in members if classes[i] in immature)
    split = lin.boundaries[k - 1] if k >= 1 else None
    placed = [positions[i] for i in members if positions[i] is not None] if positions is not None else []
    return MaturationIndex(
        lineage=lin.name,
        cells=n,
        immature_classes=tuple(immature),
        immature_by_class=_share(n_imm, n),
        mature_by_class=_share(n - n_imm, n),
        split_position=split,
        immature_by_class_interval=proportion_interval(n_imm, n),
        **_by_curve(placed, split),
    )


_NOT_ON_CURVE = dict.fromkeys(
    ("immature_by_curve", "mature_by_curve", "median_position", "immature_by_curve_interval")
    + ("before_start", "beyond_end")
)


def _by_curve(placed: Sequence[float | None], split: float | None) -> dict[str, Any]:
    """:class:`MaturationIndex`'s figures by curve position, of the cells ``placed`` on the lineage's curve
    (all of them, unless a reviewer added some): the shares before and after ``split``, the interval
    of the first, the median position, and the cells past either end. None without placed cells."""
    if not placed:
        return dict(_NOT_ON_CURVE)
    t = np.array(placed, dtype=np.float64)
    below = int(np.sum(t < (-np.inf if split is None else split)))
    immature = below / len(t)
    ends = [curve_end(v) for v in t]
    return {
        "immature_by_curve": immature,
        "mature_by_curve": 1.0 - immature,
        "median_position": float(np.median(t)),
        "immature_by_curve_interval": proportion_interval(below, len(t)),
        "before_start": ends.count("before start"),
        "beyond_end": ends.count("beyond end"),
    }


def format_interval(interval: tuple[float, float | None] | None, spec: str = ".1f") -> str:
    """``low-high`` (an unbounded upper end as ``inf``); ``n/a`` without an interval."""
    if interval is None:
        return "n/a"
    low, high = interval
    return f"{low:{spec}}-" + ("inf" if high is None else f"{high:{spec}}")


def _me(dc: DifferentialCount | None) -> tuple[str, str]:
    if dc is None or dc.me_interval is None:
        return "n/a", ""
    return ("n/a" if dc.me_ratio is None else f"{dc.me_ratio:.2f}"), format_interval(dc.me_interval, ".2f")


def _blasts(dc: DifferentialCount | None) -> tuple[str, str]:
    if dc is None or dc.blast_percentage is None:
        return "n/a", ""
    return f"{dc.blast_percentage:.1f}", format_interval(dc.blast_interval)


def format_count(
    count: DifferentialCount,
    reference: DifferentialCount | None = None,
    *,
    reference_label: str = "reference",
) -> str:
    """The differential count as a plain-text table, every share with its 95 % interval.

    Columns: class, cells, %, its 95 % CI (and the same for the reference labels, if given); then
    the M:E ratio and the blast percentage with their intervals, and per lineage the immature share
    by class and by curve position, with the cells beyond either end of the curve.
    ``reference_label`` heads the reference columns.
    """
    ci = f"{round(100 * CONFIDENCE)}% CI"
    ref = reference_label
    with_ref = reference is not None
    head = ["class", "cells", "%", ci] + ([ref, f"{ref} %", f"{ref} {ci}"] if with_ref else [])
    rows = [head]
    for c, n in count.counts.items():
        row = [c, str(n), f"{count.percentages[c]:.1f}", format_interval(count.intervals.get(c))]
        if reference is not None:
            row += [str(reference.counts[c]), f"{reference.percentages[c]:.1f}",
                    format_interval(reference.intervals.get(c))]  # fmt: skip
        rows.append(row)
    total = ["total", str(count.total), "100.0", ""]
    if reference is not None:
        total += [str(reference.total), "100.0", ""]
    rows.append(total)
    rows.append(["M:E ratio", "", *_me(count)] + (["", *_me(reference)] if with_ref else []))
    rows.append(["blasts %", "", *_blasts(count)] + (["", *_blasts(reference)] if with_ref else []))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if k == 0 or k == len(count.counts):
            lines.append("  ".join("-" * w for w in widths))
    for m in count.maturation.values():
        lines.append(maturation_line(m))
    lines.append(f"intervals: {round(100 * CONFIDENCE)} % {INTERVAL_METHOD}")
    return "\n".join(lines)


def maturation_line(m: MaturationIndex) -> str:
    """One lineage's maturation index in one line of text."""

    def pct(v: float | None, interval: tuple[float, float] | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f} % ({format_interval(_percent(interval))})"

    text = (
        f"{m.lineage}: {m.cells} cells, immature ({', '.join(m.immature_classes)}) by class "
        f"{pct(m.immature_by_class, m.immature_by_class_interval)}"
    )
    if m.immature_by_curve is not None:
        text += f", by curve position {pct(m.immature_by_curve, m.immature_by_curve_interval)}"
    if m.before_start or m.beyond_end:
        text += f"; {m.before_start} before the curve's start, {m.beyond_end} beyond its end"
    return text


def headline(count: DifferentialCount) -> str:
    """M:E, blasts and the cells flagged for review in one line (with 95 % intervals)."""
    me, me_ci = _me(count)
    blasts, blasts_ci = _blasts(count)
    return (
        f"{count.total} cells, M:E {me}" + (f" ({me_ci})" if me_ci else "")
        + f", blasts {blasts} %" + (f" ({blasts_ci})" if blasts_ci else "")
        + f", {count.borderline} flagged for review"
    )  # fmt: skip


def count_row(count: DifferentialCount) -> dict[str, float | str]:
    """The headline figures with their interval bounds, for one row of a table of slides."""

    def r(v: float | None, nd: int) -> float | str:
        return "" if v is None else round(v, nd)

    me = count.me_interval or (None, None)
    bl = count.blast_interval or (None, None)
    return {
        "me_ratio": r(count.me_ratio, 3), "me_low": r(me[0], 3), "me_high": r(me[1], 3),
        "blast_pct": r(count.blast_percentage, 2), "blast_low": r(bl[0], 2), "blast_high": r(bl[1], 2),
    }  # fmt: skip
