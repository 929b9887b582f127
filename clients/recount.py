"""``smr recount``: a reviewer's corrections, made in QuPath, turned into a new count and report.

``smr score-slide`` writes ``cells.geojson``; a reviewer imports it into QuPath, looks at the cells
(the report's galleries say which first), changes the classification of those SMR got wrong,
deletes what is not a cell (or removes its classification), may add cells, and exports the
objects as GeoJSON again. ``smr recount CORRECTED --scored DIR`` reads that file beside the
scoring run in ``DIR`` (its journal holds every cell's raw outputs and the model's classes and
lineages, so no server is needed) and writes a new ``report.html``, ``summary.json`` and
``cells.csv`` with the reviewer's classes, SMR's count beside them and every correction marked.

Cells are matched by their QuPath name (the detection id that ``score-slide`` wrote), or by the
feature's id (the UUID that ``score-slide`` derived from the detection id).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REVIEW_SCHEMA = "smr.recount"
_CHANGED, _REMOVED, _ADDED = "changed", "removed", "added"


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "recount",
        help="count a slide again after a reviewer corrected classes in QuPath",
        description="Read a GeoJSON exported from QuPath after review (classifications changed, cells "
        "deleted or added) beside the score-slide folder it came from, and write a new count with the "
        "reviewer's corrections marked: OUT/report.html, OUT/summary.json and OUT/cells.csv.",
    )
    p.add_argument("corrected", metavar="GEOJSON", help="the reviewed objects, exported from QuPath")
    p.add_argument(
        "--scored",
        metavar="DIR",
        help="the score-slide output folder the cells came from (default: the GeoJSON's folder)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: SCORED/recount)")
    p.add_argument("--title", help="report title (default: the slide's name)")
    p.add_argument(
        "--slide",
        metavar="SLIDE",
        help="the slide, for cell images in the galleries (cut as score-slide cut them)",
    )
    p.add_argument(
        "--gallery",
        type=int,
        default=None,
        metavar="N",
        help="cells per class gallery (default: the report's)",
    )
    p.set_defaults(func=run)


@dataclass(frozen=True)
class ScoredRun:
    """What ``smr recount`` takes from a score-slide folder."""

    folder: Path
    info: Any  # ModelInfo
    cells: dict[str, Any]  # id -> CellResult, in journal order
    meta: Mapping[str, Any]  # scoring-journal.json
    provenance: Mapping[str, Any] | None


def read_scored_run(folder: str | Path, *, margin: float | None = None) -> ScoredRun:
    """The model and every scored cell of a score-slide folder, from its journal (no server needed)."""
    from .errors import InputError
    from .journal import JOURNAL_CSV, JOURNAL_META
    from .results import cells_from_outputs

    folder = Path(folder)
    meta_path, csv_path = folder / JOURNAL_META, folder / JOURNAL_CSV
    if not meta_path.is_file() or not csv_path.is_file():
        raise InputError(
            f"{folder} is not a score-slide output folder ({JOURNAL_META} and {JOURNAL_CSV} are missing); "
            "pass the folder score-slide wrote with --scored"
        )
    meta, info = _read_journal_meta(meta_path)
    ids, outputs = _read_journal_rows(csv_path, info)
    results = cells_from_outputs(info, outputs, margin=margin)  # None: the served margin
    provenance = _read_provenance(folder / "summary.json")
    return ScoredRun(folder, info, dict(zip(ids, results, strict=True)), meta, provenance)


def _read_journal_meta(meta_path: Path) -> tuple[dict[str, Any], Any]:
    """The journal's metadata and the model (a ModelInfo) it records."""
    from .errors import InputError
    from .model_info import LineageInfo, ModelInfo

    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        model = meta["model"]
        info = ModelInfo(
            name=str(model["model"]),
            classes=tuple(model["classes"]),
            lineages=tuple(
                LineageInfo(
                    name=lin["name"],
                    classes=tuple(lin["classes"]),
                    targets=tuple(float(t) for t in lin["targets"]),
                    boundaries=tuple(float(b) for b in lin["boundaries"]),
                )
                for lin in model["lineages"]
            ),
            image_size=int(model["image_size"]),
            max_batch_size=1,
            review_margin=meta.get("review_margin"),  # None: journals before margins were recorded
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{meta_path}: not a readable scoring journal ({exc}); score the slide again"
        ) from None
    return meta, info


def _read_journal_rows(csv_path: Path, info) -> tuple[list[str], Any]:
    """The ids and the raw outputs (BatchOutputs) of the journal's rows, each id once (its first row)."""
    import numpy as np

    from .errors import InputError
    from .results import BatchOutputs

    n_c, n_l = len(info.classes), len(info.lineages)
    with open(csv_path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    expected = 2 + n_c + 2 * n_l
    ids, class_ids, values = [], [], []
    seen = set()
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != expected:
            raise InputError(f"{csv_path}, line {line}: damaged ({len(row)} fields, expected {expected})")
        if row[0] in seen:
            continue
        seen.add(row[0])
        ids.append(row[0])
        class_ids.append(int(row[1]))
        values.append([float(v) for v in row[2:]])
    arr = np.array(values, dtype=np.float32).reshape(len(ids), n_c + 2 * n_l)
    outputs = BatchOutputs(
        probabilities=arr[:, :n_c],
        class_id=np.array(class_ids, dtype=np.int64),
        maturity=arr[:, n_c : n_c + n_l],
        distance=arr[:, n_c + n_l :],
    )
    return ids, outputs


def _read_provenance(summary: Path) -> Mapping[str, Any] | None:
    """The scoring run's provenance from its ``summary.json`` (None when there is none to read)."""
    if not summary.is_file():
        return None
    try:
        return json.loads(summary.read_text(encoding="utf-8")).get("provenance")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s: unreadable, no provenance (%s)", summary, exc)
        return None


@dataclass(frozen=True)
class Recount:
    """What :func:`recount` counted and wrote."""

    count: Any  # DifferentialCount after review
    before: Any  # DifferentialCount of SMR's classes
    corrections: list[Any]  # report.Correction
    summary: dict[str, Any]  # as written to summary.json


@dataclass(frozen=True)
class Review:
    """The reviewed cells: each counted cell's class, SMR's class, and what the reviewer changed."""

    classes: dict[str, str]  # id -> class after review, for every counted cell (SMR's cells and added ones)
    coordinates: dict[str, tuple[float, float]]
    corrections: list[Any]  # report.Correction, in the order of the scoring run, then the added cells


def read_review(path: str | Path, run: ScoredRun) -> Review:
    """Match the reviewed GeoJSON's cells to the scoring run's; InputError for unusable files."""
    from .detections import feature_uuid, read_detections_geojson
    from .errors import InputError
    from .report import Correction

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; pass the GeoJSON exported from QuPath")
    detections = read_detections_geojson(path)
    by_uuid = {feature_uuid(i): i for i in run.cells}
    served = set(run.info.classes)
    reviewed: dict[str, str | None] = {}
    coordinates: dict[str, tuple[float, float]] = {}
    unknown: dict[str, list[str]] = {}
    for d in detections:
        cell_id = d.id if d.id in run.cells else by_uuid.get(d.id, d.id)
        if cell_id in reviewed:
            raise InputError(f"{path}: cell {cell_id!r} appears twice; remove the duplicate in QuPath")
        label = d.label
        if label is not None and label not in served:
            unknown.setdefault(label, []).append(cell_id)
        reviewed[cell_id] = label
        coordinates[cell_id] = (d.x, d.y)
    if unknown:
        what = "; ".join(f"{k!r} ({len(v)} cells, e.g. {v[0]})" for k, v in sorted(unknown.items()))
        raise InputError(
            f"{path}: classes the model does not serve: {what}; set one of {', '.join(run.info.classes)} "
            "in QuPath, or remove the classification to leave a cell out of the count"
        )
    classes: dict[str, str] = {}
    corrections = []
    for cell_id, cell in run.cells.items():
        x, y = coordinates.get(cell_id, (None, None))
        label = reviewed.get(cell_id)
        if label is None:  # deleted in QuPath, or its classification removed
            corrections.append(Correction(cell_id, cell.class_name, None, x, y, cell.probability))
            continue
        classes[cell_id] = label
        if label != cell.class_name:
            corrections.append(Correction(cell_id, cell.class_name, label, x, y, cell.probability))
    for cell_id, label in reviewed.items():
        if cell_id not in run.cells and label is not None:
            classes[cell_id] = label
            corrections.append(Correction(cell_id, None, label, *coordinates[cell_id]))
    return Review(classes, coordinates, corrections)


def _kind(c) -> str:
    return _ADDED if c.smr_class is None else (_REMOVED if c.reviewed_class is None else _CHANGED)


def recount(
    corrected: str | Path,
    scored: str | Path,
    out: str | Path,
    *,
    title: str | None = None,
    slide: str | Path | None = None,
    per_class: int | None = None,
) -> Recount:
    """Count the reviewed cells and write ``report.html``, ``summary.json`` and ``cells.csv`` to ``out``.

    Raises :class:`~smr.clients.errors.InputError` before anything is written when an input is
    unusable.
    """
    from .errors import InputError

    scored, out = Path(scored), Path(out)
    if out.resolve() == scored.resolve():
        raise InputError(
            f"--out {out} is the scoring run's folder; its report and summary would be overwritten: "
            "choose another folder"
        )
    run = read_scored_run(scored)
    review = read_review(corrected, run)
    with contextlib.ExitStack() as stack:
        crop = None
        if slide is not None:
            from .slides import open_slide

            crop = _cropper(run, stack.enter_context(open_slide(slide)), review.coordinates)
        return _recount(run, review, corrected, scored, out, title, crop, per_class)


def _recount(run, review, corrected, scored: Path, out: Path, title, crop, per_class) -> Recount:
    """Count the reviewed cells and write ``cells.csv``, ``summary.json`` and ``report.html`` to ``out``
    (``crop``: the galleries' cell images, or None)."""
    from .atomic import atomic_write_text
    from .report import write_report

    counted = _count_review(run, review)
    galleries = _review_galleries(run, review, crop, per_class)
    kinds = [_kind(c) for c in review.corrections]
    summary = _review_summary(run, review, kinds, counted, corrected, scored)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "cells.csv", _cells_csv(run, review, kinds))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    report = _report_data(run, review, kinds, counted, galleries, corrected, scored, title)
    write_report(out / "report.html", report)
    return Recount(counted.count, counted.before, review.corrections, summary)


@dataclass(frozen=True)
class _Counted:
    """The counts of a review: after it, and SMR's before it; the counted cells' curve positions."""

    count: Any  # DifferentialCount after review
    before: Any  # DifferentialCount of SMR's classes
    positions: dict[str, tuple[list[float], list[str]]]  # per lineage: positions and classes (ReportData's)


def _count_review(run: ScoredRun, review: Review) -> _Counted:
    """The differential count with the reviewer's classes, and SMR's own."""
    from .summary import count_cells, differential_count

    info = run.info
    ids = list(review.classes)
    classes = [review.classes[i] for i in ids]
    positions = _reviewed_positions(run, ids, classes)
    flagged = [bool(run.cells[i].borderline) if i in run.cells else False for i in ids]
    count = differential_count(info, classes, positions=positions, borderline=flagged)
    before = count_cells(info, list(run.cells.values()))
    return _Counted(count, before, _positions_by_lineage(info, positions, classes))


def _lineage_of(info) -> dict[str, str]:
    """The lineage of each class that is a stage of one."""
    return {c: lin.name for lin in info.lineages for c in lin.classes}


def _reviewed_positions(run: ScoredRun, ids: list[str], classes: list[str]) -> list[float | None]:
    """Each cell's position on the curve of its reviewed class's lineage (None: a cell the reviewer
    added, or a class of no lineage)."""
    lineage_of = _lineage_of(run.info)

    def position(cell_id: str, cls: str) -> float | None:
        cell = run.cells.get(cell_id)
        lineage = lineage_of.get(cls)
        if cell is None or lineage is None:
            return None
        return next(p.position for p in cell.lineages if p.lineage == lineage)

    return [position(i, c) for i, c in zip(ids, classes, strict=True)]


def _positions_by_lineage(
    info, positions: list[float | None], classes: list[str]
) -> dict[str, tuple[list[float], list[str]]]:
    """The positions and classes of the placed cells, per lineage."""
    lineage_of = _lineage_of(info)
    placed = [(p, c) for p, c in zip(positions, classes, strict=True) if p is not None]
    return {
        lin.name: (
            [p for p, c in placed if lineage_of[c] == lin.name],
            [c for p, c in placed if lineage_of[c] == lin.name],
        )
        for lin in info.lineages
    }


def _review_galleries(run: ScoredRun, review: Review, crop, per_class: int | None):
    """The report's galleries of the counted cells, the reclassified ones in their reviewed class."""
    from .report import DEFAULT_PER_CLASS, review_galleries

    changed = {c.id: c.reviewed_class for c in review.corrections if _kind(c) == _CHANGED}
    counted = {i: run.cells[i] for i in review.classes if i in run.cells}
    return review_galleries(
        run.info,
        counted,
        review.coordinates,
        crop,
        per_class=DEFAULT_PER_CLASS if per_class is None else per_class,
        reviewed=changed,
    )


def _review_summary(
    run: ScoredRun, review: Review, kinds: list[str], counted: _Counted, corrected, scored: Path
) -> dict[str, Any]:
    """``summary.json`` of the review."""
    return {
        "schema": REVIEW_SCHEMA,
        "reviewed": str(corrected),
        "scored": str(scored),
        "cells": len(review.classes),
        "corrections": {
            "changed": kinds.count(_CHANGED),
            "removed": kinds.count(_REMOVED),
            "added": kinds.count(_ADDED),
            "cells": [
                {
                    "id": c.id,
                    "kind": k,
                    "smr_class": c.smr_class,
                    "reviewed_class": c.reviewed_class,
                    "x": c.x,
                    "y": c.y,
                }
                for c, k in zip(review.corrections, kinds, strict=True)
            ],
        },  # fmt: skip
        "count": counted.count.to_dict(),
        "smr_count": counted.before.to_dict(),
        "provenance": run.provenance,
    }


_CSV_FIELDS = ["id", "x", "y", "class", "smr_class", "correction", "probability", "borderline"]


def _cells_csv(run: ScoredRun, review: Review, kinds: list[str]) -> str:
    """``cells.csv`` of the review: SMR's cells in the order of the scoring run, then the added ones."""
    from .outputs import csv_text

    fix = {c.id: k for c, k in zip(review.corrections, kinds, strict=True)}
    records = []
    for cell_id in list(run.cells) + [i for i in review.classes if i not in run.cells]:
        cell = run.cells.get(cell_id)
        x, y = review.coordinates.get(cell_id, (None, None))
        records.append(
            {"id": cell_id, "x": x, "y": y, "class": review.classes.get(cell_id, ""),
             "smr_class": "" if cell is None else cell.class_name, "correction": fix.get(cell_id, ""),
             "probability": None if cell is None else cell.probability,
             "borderline": None if cell is None else cell.borderline}
        )  # fmt: skip
    return csv_text(_CSV_FIELDS, records)


def _report_data(
    run: ScoredRun,
    review: Review,
    kinds: list[str],
    counted: _Counted,
    galleries,
    corrected,
    scored: Path,
    title: str | None,
):
    """The report after review: the reviewer's count beside SMR's, the corrections marked."""
    from .report import ReportData
    from .results import review_margin

    slide_name = (run.meta.get("run") or {}).get("slide", {}).get("name") or scored.name
    return ReportData(
        title=title or f"SMR report after review: {slide_name}",
        info=run.info,
        count=counted.count,
        positions=counted.positions,
        reference=counted.before,
        reference_label="SMR before review",
        count_label="after review",
        galleries=galleries,
        provenance=run.provenance,
        corrections=review.corrections,
        margin=review_margin(run.info),
        facts={
            "reviewed objects": f"{Path(corrected).name}: {len(review.coordinates)} objects",
            "scoring run": str(scored),
            "corrections": f"{kinds.count(_CHANGED)} reclassified, {kinds.count(_REMOVED)} removed, "
            f"{kinds.count(_ADDED)} added",
        },
    )


def _cropper(run: ScoredRun, slide, coordinates: Mapping[str, tuple[float, float]]):
    """``crop(id)`` cutting each cell's patch from ``slide`` as score-slide did (its journal's geometry)."""
    from .detections import Detection
    from .errors import InputError
    from .patches import PatchGeometry, crop_patch

    geometry = (run.meta.get("run") or {}).get("geometry")
    try:
        geom = PatchGeometry(**{k: geometry[k] for k in ("level", "downsample", "region", "size", "mpp")})
    except (TypeError, KeyError) as exc:
        raise InputError(
            f"{run.folder}: the scoring journal does not record how patches were cut ({exc}); "
            "run without --slide"
        ) from None

    def crop(cell_id: str):
        x, y = coordinates[cell_id]
        return crop_patch(slide, Detection(cell_id, x, y), geom)

    return crop


def run(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .summary import format_count

    corrected = Path(args.corrected)
    scored = Path(args.scored) if args.scored else corrected.parent
    out = Path(args.out) if args.out else scored / "recount"
    if args.gallery is not None and args.gallery < 0:
        print(f"smr recount: error: --gallery {args.gallery} must be >= 0", file=sys.stderr)
        return 2
    try:
        result = recount(corrected, scored, out, title=args.title, slide=args.slide, per_class=args.gallery)
    except InputError as exc:
        print(f"smr recount: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"smr recount: error: cannot write to {out} ({exc}); check the folder and its permissions",
              file=sys.stderr)  # fmt: skip
        return 1
    print(format_count(result.count, result.before, reference_label="SMR"))
    fixes = result.summary["corrections"]
    print(
        f"{result.count.total} cells after review: {fixes['changed']} reclassified, {fixes['removed']} "
        f"removed, {fixes['added']} added"
    )
    print(f"report: {out / 'report.html'}")
    return 0
