"""Closing summaries of ``smr synth`` and ``smr synth-slide``: counts per class, maturity ranges."""

from __future__ import annotations

import math

import numpy as np

from smr.core.lineages import PAPER_SPEC

from .patches import SynthSummary
from .slide import SlideSummary

__all__ = ["format_patch_summary", "format_slide_summary"]


def _counts_table(counts: dict[str, int], maturities: dict[str, list[float]] | None = None) -> list[str]:
    total = sum(counts.values())
    head = f"  {'class':<28} {'lineage':<15} {'cells':>6} {'share':>6}"
    if maturities is not None:
        head += "   maturity min / median / max"
    lines = [head]
    for name in PAPER_SPEC.classes:
        where = PAPER_SPEC.stage_of(name)
        lineage = PAPER_SPEC.lineages[where[0]].name if where else "other"
        n = counts.get(name, 0)
        line = f"  {name:<28} {lineage:<15} {n:>6} {n / max(total, 1):>6.1%}"
        values = (maturities or {}).get(name)
        if values:
            lo, med, hi = np.min(values), np.median(values), np.max(values)
            line += f"   {lo:.3f} / {med:.3f} / {hi:.3f}"
        lines.append(line)
    lines.append(f"  {'total':<28} {'':<15} {total:>6}")
    return lines


def format_patch_summary(summary: SynthSummary) -> str:
    maturities: dict[str, list[float]] = {}
    for d in summary.draws:
        if not math.isnan(d.maturity):
            maturities.setdefault(d.cls, []).append(d.maturity)
    n = len(summary.draws)
    lines = [
        f"wrote {n} patches to {summary.out} in {summary.seconds:.1f} s ({n / summary.seconds:.0f} cells/s)"
    ]
    lines += _counts_table(summary.counts(), maturities)
    return "\n".join(lines)


def format_slide_summary(summary: SlideSummary) -> str:
    levels = ", ".join(f"{w}x{h}" for w, h in summary.levels)
    lines = [
        f"wrote {summary.out}/slide.tiff ({summary.width} x {summary.height} px, levels {levels}) "
        f"and {sum(summary.counts.values())} detections in {summary.seconds:.1f} s"
    ]
    lines += _counts_table(summary.counts)
    return "\n".join(lines)
