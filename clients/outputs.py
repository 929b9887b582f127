"""Writing ``smr classify`` results as CSV or JSON (atomically)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from .atomic import atomic_write_text
from .results import CellResult

__all__ = ["classify_rows", "write_classify_output"]


def classify_rows(files: Sequence[Path | str], cells: Sequence[CellResult]) -> list[dict]:
    rows = []
    for f, c in zip(files, cells, strict=True):
        row = {
            "file": str(f),
            "class": c.class_name,
            "probability": round(c.probability, 6),
            "lineage": c.lineage or "",
            "position": "" if c.position is None else round(c.position, 6),
            "distance": "" if c.distance is None else round(c.distance, 6),
            "stage_estimate": c.stage_estimate or "",
            "borderline": "true" if c.borderline else "false",
            "borderline_reason": c.borderline_reason,
        }
        for p in c.lineages:
            row[f"position_{p.lineage}"] = round(p.position, 6)
            row[f"distance_{p.lineage}"] = round(p.distance, 6)
        for name, prob in c.probabilities.items():
            row[f"p_{name}"] = round(prob, 6)
        rows.append(row)
    return rows


def write_classify_output(path: str | Path, files: Sequence[Path | str], cells: Sequence[CellResult]) -> Path:
    """CSV (one row per image) or JSON (a list of objects, embeddings included when fetched), by suffix."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        doc = [{"file": str(f), **c.to_dict()} for f, c in zip(files, cells, strict=True)]
        return atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    if path.suffix.lower() != ".csv":
        raise ValueError(f"{path}: unknown output format {path.suffix!r}; valid: .csv, .json")
    rows = classify_rows(files, cells)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())
