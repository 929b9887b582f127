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
after the stage boundary that separates the halves), with the median position on the curve.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .model_info import ModelInfo

__all__ = [
    "LOW_COUNT",
    "CountDefinitions",
    "MaturationIndex",
    "DifferentialCount",
    "differential_count",
    "format_count",
]

#: Fewer scored cells than this and a differential count is statistically weak (common practice: 500).
LOW_COUNT = 500

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
    """Immature vs mature share of one lineage's cells."""

    lineage: str
    cells: int
    immature_classes: tuple[str, ...]
    immature_by_class: float | None  # share of the lineage's cells with an immature class (SVM)
    mature_by_class: float | None
    immature_by_curve: float | None  # share with a position before the halves' boundary (SMR)
    mature_by_curve: float | None
    median_position: float | None


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

    @property
    def low_count(self) -> bool:
        return self.total < LOW_COUNT

    def to_dict(self) -> dict:
        d = asdict(self)
        d["low_count"] = self.low_count
        return d


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
    myeloid = sum(counts[c] for c in defs.myeloid)
    erythroid = sum(counts[c] for c in defs.erythroid)
    blasts = sum(counts[c] for c in defs.blasts)

    maturation = {}
    for lin in info.lineages:
        k = defs.immature_stages.get(lin.name, len(lin.classes) // 2)
        immature = lin.classes[:k]
        members = [i for i, c in enumerate(classes) if c in lin.classes]
        n = len(members)
        n_imm = sum(1 for i in members if classes[i] in immature)
        imm_curve = mat_curve = median = None
        if positions is not None and n:
            t = np.array([positions[i] for i in members], dtype=np.float64)
            split = lin.boundaries[k - 1] if k >= 1 else -np.inf
            imm_curve = float(np.mean(t < split))
            mat_curve = 1.0 - imm_curve
            median = float(np.median(t))
        maturation[lin.name] = MaturationIndex(
            lineage=lin.name,
            cells=n,
            immature_classes=tuple(immature),
            immature_by_class=_share(n_imm, n),
            mature_by_class=_share(n - n_imm, n),
            immature_by_curve=imm_curve,
            mature_by_curve=mat_curve,
            median_position=median,
        )
    return DifferentialCount(
        total=total,
        counts=counts,
        percentages=percentages,
        myeloid=myeloid,
        erythroid=erythroid,
        me_ratio=None if erythroid == 0 else myeloid / erythroid,
        blasts=blasts,
        blast_percentage=None if total == 0 else 100.0 * blasts / total,
        maturation=maturation,
        borderline=int(sum(bool(b) for b in borderline)) if borderline is not None else 0,
        definitions=defs,
    )


def format_count(count: DifferentialCount, reference: DifferentialCount | None = None) -> str:
    """The differential count as a plain-text table (with the reference labels beside it, if given)."""
    head = ["class", "cells", "%"] + (["reference", "ref %"] if reference is not None else [])
    rows = [head]
    for c, n in count.counts.items():
        row = [c, str(n), f"{count.percentages[c]:.1f}"]
        if reference is not None:
            row += [str(reference.counts[c]), f"{reference.percentages[c]:.1f}"]
        rows.append(row)
    total = ["total", str(count.total), "100.0"]
    if reference is not None:
        total += [str(reference.total), "100.0"]
    rows.append(total)

    def ratio(dc: DifferentialCount | None) -> str:
        return "n/a" if dc is None or dc.me_ratio is None else f"{dc.me_ratio:.2f}"

    def blasts(dc: DifferentialCount | None) -> str:
        return "n/a" if dc is None or dc.blast_percentage is None else f"{dc.blast_percentage:.1f}"

    rows.append(["M:E ratio", ratio(count), ""] + ([ratio(reference), ""] if reference is not None else []))
    rows.append(["blasts %", blasts(count), ""] + ([blasts(reference), ""] if reference is not None else []))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if k == 0 or k == len(count.counts):
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
