"""Scoring many slides: find (slide, detections) pairs, score a bounded number at once, summarise.

A folder is searched in two layouts, which may be mixed:

- one sub-folder per slide holding one slide file and ``detections.csv``/``.geojson`` (or a
  detections file named like the slide), as ``smr synth-slide`` writes them; the job is named
  after the sub-folder (PNG/JPEG files beside a whole-slide file are taken for thumbnails);
- slide files side by side with detections named after them: ``A.svs`` + ``A.csv``,
  ``A.geojson`` or ``A.detections.csv``; the job is named after the slide's stem.

A list file (``.csv``/``.tsv``/``.txt``) names one job per line: ``slide,detections[,name]``
(paths relative to the list file; a header line starting with ``slide`` is skipped).
"""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .errors import InputError, SMRClientError
from .model_info import ModelInfo
from .scoring import SlideScore
from .slides import PLAIN_IMAGE_SUFFIXES
from .summary import count_row
from .summary_html import write_summary_html

__all__ = [
    "SlideJob",
    "JobOutcome",
    "find_jobs",
    "run_jobs",
    "summary_rows",
    "write_summary",
    "SLIDE_SUFFIXES",
]

SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".bif",
    ".svslide",
    ".png",
    ".jpg",
    ".jpeg",
)
DETECTION_SUFFIXES = (".csv", ".tsv", ".geojson", ".json")
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"


@dataclass(frozen=True)
class SlideJob:
    name: str
    slide: Path
    detections: Path


@dataclass
class JobOutcome:
    job: SlideJob
    score: SlideScore | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.score is not None


def _detections_for(slide: Path, folder_default: bool) -> Path | None:
    """The slide's detections file: ``<stem>.detections.*``, then (alone in its folder)
    ``detections.*``, then ``<stem>.*`` (so that a scanner's or generator's ``<stem>.json`` of
    metadata beside a ``detections.csv`` is not taken for the detections)."""
    stem = slide.name[: -len(slide.suffix)] if slide.suffix else slide.name
    names = [f"{stem}.detections{s}" for s in DETECTION_SUFFIXES]
    if folder_default:
        names += [f"detections{s}" for s in DETECTION_SUFFIXES]
    names += [f"{stem}{s}" for s in DETECTION_SUFFIXES]
    for name in names:
        candidate = slide.parent / name
        if candidate.is_file() and candidate != slide:
            return candidate
    return None


def _is_slide(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SLIDE_SUFFIXES and not path.name.startswith(".")


def find_jobs(source: str | Path) -> tuple[list[SlideJob], list[str]]:
    """Jobs found in a folder or list file, and what was skipped (with the reason)."""
    source = Path(source)
    skipped: list[str] = []
    jobs: list[SlideJob] = []
    if source.is_file():
        base = source.parent
        delimiter = "\t" if source.suffix.lower() == ".tsv" else ","
        with open(source, encoding="utf-8", newline="") as f:
            for line, row in enumerate(csv.reader(f, delimiter=delimiter), start=1):
                row = [c.strip() for c in row]
                if not row or not row[0] or row[0].startswith("#"):
                    continue
                if line == 1 and row[0].lower() == "slide":
                    continue
                if len(row) < 2:
                    raise InputError(f"{source}, line {line}: expected 'slide,detections[,name]'")
                slide, dets = (base / row[0]).resolve(), (base / row[1]).resolve()
                name = row[2] if len(row) > 2 and row[2] else slide.stem
                for p, what in ((slide, "slide"), (dets, "detections")):
                    if not p.is_file():
                        raise InputError(f"{source}, line {line}: {what} {p} does not exist")
                jobs.append(SlideJob(name, slide, dets))
    elif source.is_dir():
        for entry in sorted(source.iterdir()):
            if entry.is_dir():
                slides = [p for p in sorted(entry.iterdir()) if _is_slide(p)]
                whole = [p for p in slides if p.suffix.lower() not in PLAIN_IMAGE_SUFFIXES]
                slides = whole or slides  # beside a whole-slide file, PNG/JPEG are thumbnails or labels
                if not slides:
                    continue
                if len(slides) > 1:
                    named = [(s, _detections_for(s, False)) for s in slides]
                    for s, d in named:
                        if d is None:
                            skipped.append(f"{s}: no detections file named after it")
                        else:
                            jobs.append(SlideJob(f"{entry.name}-{s.stem}", s, d))
                    continue
                dets = _detections_for(slides[0], True)
                if dets is None:
                    skipped.append(f"{slides[0]}: no detections file beside it")
                else:
                    jobs.append(SlideJob(entry.name, slides[0], dets))
            elif _is_slide(entry):
                dets = _detections_for(entry, False)
                if dets is None:
                    skipped.append(f"{entry}: no detections file named after it")
                else:
                    jobs.append(SlideJob(entry.stem, entry, dets))
    else:
        raise InputError(f"{source}: no such folder or list file")
    names = [j.name for j in jobs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(
            f"{source}: several slides would be written to the same output folder: {', '.join(dupes)}"
        )
    if not jobs:
        hint = "; ".join(skipped) if skipped else "no slide files found"
        raise InputError(f"{source}: no slide with detections found ({hint})")
    return jobs, skipped


def run_jobs(
    jobs: Sequence[SlideJob],
    score: Callable[[SlideJob], SlideScore],
    *,
    parallel: int = 2,
    on_done: Callable[[JobOutcome], None] | None = None,
) -> list[JobOutcome]:
    """Score ``jobs`` with at most ``parallel`` at once; a failing slide does not stop the others."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    outcomes: dict[str, JobOutcome] = {}
    lock = threading.Lock()

    def one(job: SlideJob) -> JobOutcome:
        try:
            return JobOutcome(job, score=score(job))
        except (SMRClientError, OSError) as exc:
            return JobOutcome(job, error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    with ThreadPoolExecutor(parallel, thread_name_prefix="smr-slide") as pool:
        futures = [pool.submit(one, job) for job in jobs]
        for future in as_completed(futures):
            outcome = future.result()
            with lock:
                outcomes[outcome.job.name] = outcome
            if on_done is not None:
                on_done(outcome)
    return [outcomes[j.name] for j in jobs]


def summary_rows(outcomes: Sequence[JobOutcome], info: ModelInfo) -> list[dict[str, Any]]:
    """One row per slide: status, counts, M:E, blasts, borderline, maturation and class percentages."""
    rows = []
    for o in outcomes:
        row: dict[str, Any] = {
            "name": o.job.name,
            "slide": str(o.job.slide),
            "status": "ok" if o.ok else "failed",
            "error": o.error or "",
        }
        if o.score is not None:
            c = o.score.count
            row.update(
                cells=c.total,
                outside=len(o.score.outside_ids),
                borderline=c.borderline,
                **count_row(c),
                low_count=c.low_count,
                report=str(o.score.paths.get("report", "")),
            )
            for lin, m in c.maturation.items():
                row[f"immature_pct_{lin}"] = (
                    "" if m.immature_by_class is None else round(100 * m.immature_by_class, 1)
                )
            for cls in info.classes:
                row[f"pct_{cls}"] = round(c.percentages[cls], 2)
        rows.append(row)
    return rows


def write_summary(out_dir: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """``summary.csv`` (one row per slide) and ``summary.json``, atomically, and ``summary.html``."""
    import io

    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = atomic_write_text(out_dir / SUMMARY_CSV, buf.getvalue())
    json_path = atomic_write_text(out_dir / SUMMARY_JSON, json.dumps(rows, indent=2) + "\n")
    write_summary_html(out_dir, rows)
    return csv_path, json_path
