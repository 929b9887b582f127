"""Tables of results: ``smr classify`` CSV/JSON and a slide's ``cells.csv`` (written atomically).

Both CSV files carry every class's probability (``p_<class>``) and are safe to open in a
spreadsheet: a text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
(which Excel, LibreOffice and Google Sheets would run as a formula) is written with a leading
``'`` (:func:`spreadsheet_safe`). Numbers are written as numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .detections import Detection
from .model_info import ModelInfo
from .results import CellResult

__all__ = [
    "FORMULA_PREFIXES",
    "spreadsheet_safe",
    "csv_text",
    "cell_fields",
    "cell_records",
    "classify_rows",
    "write_classify_output",
]

#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# cells.csv columns that hold a cell's result; empty for detections outside the slide
_RESULT_FIELDS = (
    "class",
    "probability",
    "runner_up",
    "margin",
    "lineage",
    "position",
    "curve_end",
    "distance",
    "stage_estimate",
    "borderline",
    "borderline_reason",
)


def spreadsheet_safe(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would run it as a formula; else unchanged."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return str(value)
    return spreadsheet_safe(str(value))


def _quoted(text: str) -> str:
    """RFC 4180 quoting, also for a lone carriage return (which ``csv.writer`` with a "\\n" line end
    leaves bare, so that readers split the row there)."""
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_text(fields: Sequence[str], records: Sequence[Mapping[str, Any]]) -> str:
    """CSV with a header; floats with 6 significant digits, booleans as true/false, text made safe."""
    lines = [",".join(_quoted(spreadsheet_safe(f)) for f in fields)]
    for r in records:
        lines.append(",".join(_quoted(_cell(r.get(f))) for f in fields))
    return "\n".join(lines) + "\n"


def cell_fields(info: ModelInfo) -> list[str]:
    """Columns of a slide's ``cells.csv``."""
    return (
        ["id", "x", "y", "status"]
        + list(_RESULT_FIELDS)
        + ["reference_class"]
        + [f"position_{lin.name}" for lin in info.lineages]
        + [f"distance_{lin.name}" for lin in info.lineages]
        + [f"p_{c}" for c in info.classes]
    )


def cell_records(
    info: ModelInfo, detections: Sequence[Detection], cells: Mapping[str, CellResult]
) -> list[dict[str, Any]]:
    """One record per detection, in detection order: scored cells and those outside the slide."""
    records = []
    for d in detections:
        r: dict[str, Any] = {"id": d.id, "x": d.x, "y": d.y, "reference_class": d.label or ""}
        cell = cells.get(d.id)
        if cell is None:
            r.update(dict.fromkeys(_RESULT_FIELDS, ""), status="outside")
            for lin in info.lineages:
                r[f"position_{lin.name}"] = r[f"distance_{lin.name}"] = ""
            for c in info.classes:
                r[f"p_{c}"] = ""
        else:
            r.update(
                status="scored",
                **{
                    "class": cell.class_name,
                    "probability": cell.probability,
                    "runner_up": cell.runner_up,
                    "margin": cell.margin,
                    "lineage": cell.lineage or "",
                    "position": "" if cell.position is None else cell.position,
                    "curve_end": cell.end,
                    "distance": "" if cell.distance is None else cell.distance,
                    "stage_estimate": cell.stage_estimate or "",
                    "borderline": cell.borderline,
                    "borderline_reason": cell.borderline_reason,
                },
            )
            for p in cell.lineages:
                r[f"position_{p.lineage}"] = p.position
                r[f"distance_{p.lineage}"] = p.distance
            for c, prob in cell.probabilities.items():
                r[f"p_{c}"] = prob
        records.append(r)
    return records


def classify_rows(files: Sequence[Path | str], cells: Sequence[CellResult]) -> list[dict]:
    rows = []
    for f, c in zip(files, cells, strict=True):
        row = {
            "file": str(f),
            "class": c.class_name,
            "probability": round(c.probability, 6),
            "runner_up": c.runner_up,
            "margin": round(c.margin, 6),
            "lineage": c.lineage or "",
            "position": "" if c.position is None else round(c.position, 6),
            "curve_end": c.end,
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
    return atomic_write_text(path, csv_text(list(rows[0]), rows) if rows else "")
