"""Scoring a whole slide: crop every detection, classify, journal, then write cells.csv, GeoJSON and report.

:func:`score_slide` is resumable: finished batches go to a journal (see :mod:`.journal`) and a
run that was interrupted (killed, server gone) continues where it stopped. The final files are
written only when every detection is accounted for, each atomically, and each lists every
detection exactly once, in the order of the detections file.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_text
from .client import SMRClient
from .defaults import DEFAULT_FLAGGED, DEFAULT_PER_CLASS
from .detections import Detection, cells_feature_collection, read_detections
from .errors import InputError, SMRClientError
from .journal import Journal, slide_sha256
from .model_info import ModelInfo, provenance
from .outputs import cell_fields, cell_records, csv_text
from .palette import class_colors
from .patches import (
    DEFAULT_BLOCK,
    PatchGeometry,
    crop_patch,
    inside,
    iter_patches,
    patch_geometry,
    slide_resolution,
)
from .report import ReportData, ReviewGalleries, review_galleries, write_report
from .results import CellResult, cells_from_outputs, review_margin
from .slides import Slide, open_slide
from .summary import DifferentialCount, ReviewYield, count_cells, differential_count, review_yield

__all__ = [
    "CELLS_CSV",
    "CELLS_GEOJSON",
    "REPORT_HTML",
    "SUMMARY_JSON",
    "ScoringInterrupted",
    "SlideScore",
    "score_slide",
    "model_scale",
]

CELLS_CSV = "cells.csv"
CELLS_GEOJSON = "cells.geojson"
REPORT_HTML = "report.html"
SUMMARY_JSON = "summary.json"


class ScoringInterrupted(SMRClientError):
    """Scoring stopped before every cell was scored; what was scored is kept in the journal."""

    def __init__(self, message: str, *, scored: int, total: int, journal: Path) -> None:
        super().__init__(message)
        self.scored = scored
        self.total = total
        self.journal = journal


@dataclass
class SlideScore:
    """What :func:`score_slide` produced."""

    out_dir: Path
    slide: Path
    detections: int
    scored: int
    outside_ids: list[str]
    resumed: int  # cells taken from the journal of an earlier run
    seconds: float  # this run's inference wall time
    count: DifferentialCount
    reference: DifferentialCount | None  # from the detections' own labels, when they are served classes
    review: ReviewYield | None  # the review flags against those labels, when there are labels
    info: ModelInfo
    paths: dict[str, Path] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # summary.json's "provenance"

    @property
    def cells_per_second(self) -> float:
        fresh = self.scored - self.resumed
        return fresh / self.seconds if self.seconds > 0 else float("nan")


def _batches(
    slide: Slide, detections: Sequence[Detection], todo: list[int], geom: PatchGeometry, size: int, block: int
) -> Iterator[tuple[list[str], np.ndarray]]:
    ids: list[str] = []
    batch = np.empty((size, geom.size, geom.size, 3), dtype=np.uint8)
    for i, patch in iter_patches(slide, detections, todo, geom, block=block):
        batch[len(ids)] = patch
        ids.append(detections[i].id)
        if len(ids) == size:
            yield ids, batch
            ids, batch = [], np.empty_like(batch)
    if ids:
        yield ids, batch[: len(ids)]


def model_scale(info: ModelInfo, url: str, mpp: float | None, level: int | None) -> float | None:
    """The microns per pixel to crop patches at: ``mpp`` when given, else the model's own.

    ``None`` with an explicit ``level`` (read as it is). :class:`InputError` (one line) when neither
    ``mpp`` nor the model says and no level is given.
    """
    if level is not None or mpp is not None:
        return mpp
    if info.microns_per_pixel is None:
        raise InputError(
            f"model {info.name!r} at {url} does not state the scale it was trained at (no "
            "microns_per_pixel in its ensemble parameters: its data set's lineages.toml had no [imaging] "
            "microns_per_pixel, or it was exported by an older SMR); pass --mpp UM, the microns per pixel "
            "of its input, or read a pyramid level as it is with --level N"
        )
    return info.microns_per_pixel


def score_slide(
    slide_path: str | Path,
    detections_path: str | Path,
    out_dir: str | Path,
    client: SMRClient,
    *,
    mpp: float | None = None,
    level: int | None = None,
    slide_mpp: float | None = None,
    restart: bool = False,
    progress: bool = True,
    gallery: int = DEFAULT_FLAGGED,
    per_class: int = DEFAULT_PER_CLASS,
    block: int = DEFAULT_BLOCK,
    title: str | None = None,
) -> SlideScore:
    """Score every detection of one slide and write ``cells.csv``, ``cells.geojson``, ``report.html``.

    Patches are cropped at the scale the model was trained at (``client.info.microns_per_pixel``)
    unless ``mpp`` overrides it or ``level`` reads a pyramid level as it is; the slide's resolution
    comes from its file or ``slide_mpp``.

    Raises :class:`ScoringInterrupted` when the server stops answering (the journal keeps what
    was scored; call again to continue) and :class:`~smr.clients.errors.InputError` for unusable
    inputs, before anything is sent.
    """
    slide_path, detections_path, out_dir = Path(slide_path), Path(detections_path), Path(out_dir)
    detections = read_detections(detections_path)
    with contextlib.ExitStack() as stack:
        slide = stack.enter_context(open_slide(slide_path))
        geom = _patch_geometry(slide, client, mpp, level, slide_mpp)
        run = _run_record(slide_path, slide, detections_path, detections, geom)
        journal = _open_journal(stack, out_dir, client.info, run, slide_path, restart)
        on_slide = [i for i, d in enumerate(detections) if inside(slide, d)]
        todo = [i for i in on_slide if detections[i].id not in journal]
        seconds = _score_into_journal(
            client, slide, detections, on_slide, todo, geom, journal, block, progress
        )
        resumed = len(on_slide) - len(todo)
        score, cells = _slide_score(
            client, journal, out_dir, slide_path, detections, on_slide, resumed, seconds
        )
        facts = _run_facts(score, client, slide, geom, detections_path, mpp, level, fresh=len(todo))
        coordinates = {d.id: (d.x, d.y) for d in detections}
        crop = _cropper(slide, detections, geom)
        galleries = review_galleries(
            score.info, cells, coordinates, crop, per_class=per_class, flagged=gallery
        )
        margin = review_margin(score.info, client.margin)
        _write_outputs(score, detections, cells, geom, galleries, facts, margin, title)
        return score


def _patch_geometry(
    slide: Slide, client: SMRClient, mpp: float | None, level: int | None, slide_mpp: float | None
) -> PatchGeometry:
    """How patches are cut from ``slide`` for the model at ``client``; the slide's resolution is
    checked before the server is asked anything."""
    if level is None:
        slide_resolution(slide, slide_mpp)
    info = client.info
    return patch_geometry(
        slide,
        info.image_size,
        mpp=model_scale(info, client.url, mpp, level),
        level=level,
        slide_mpp=slide_mpp,
    )


def _open_journal(
    stack: contextlib.ExitStack,
    out_dir: Path,
    info: ModelInfo,
    run: dict[str, Any],
    slide_path: Path,
    restart: bool,
) -> Journal:
    """The run's journal in ``out_dir`` (made), closed with ``stack``; with ``restart``, the outputs of
    the run it discards are removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = stack.enter_context(Journal.open(out_dir, info, run, restart=restart, slide=slide_path))
    if restart:  # outputs of the discarded run must not outlive it
        for name in (CELLS_CSV, CELLS_GEOJSON, REPORT_HTML, SUMMARY_JSON):
            (out_dir / name).unlink(missing_ok=True)
    return journal


def _slide_score(
    client: SMRClient,
    journal: Journal,
    out_dir: Path,
    slide_path: Path,
    detections: Sequence[Detection],
    on_slide: list[int],
    resumed: int,
    seconds: float,
) -> tuple[SlideScore, dict[str, CellResult]]:
    """The count of the cells on the slide, all scored now, checked against the detections' own labels
    when they are served classes; and the cells by id."""
    info = client.info
    scored_ids = [detections[i].id for i in on_slide]
    results = _journal_results(journal, info, scored_ids, client.margin)
    placed = set(on_slide)
    score = SlideScore(
        out_dir=out_dir,
        slide=slide_path,
        detections=len(detections),
        scored=len(scored_ids),
        outside_ids=[d.id for i, d in enumerate(detections) if i not in placed],
        resumed=resumed,
        seconds=seconds,
        count=count_cells(info, results),
        reference=None,
        review=None,
        info=info,
        provenance=provenance(info, client.server_version),
    )
    _check_against_labels(score, [detections[i].label for i in on_slide], results)
    return score, dict(zip(scored_ids, results, strict=True))


def _journal_results(
    journal: Journal, info: ModelInfo, ids: list[str], margin: float | None
) -> list[CellResult]:
    """The cells ``ids`` from the journal, where every one must be."""
    missing = [i for i in ids if i not in journal]
    if missing:  # cannot happen unless the journal was edited while we ran
        raise InputError(f"{journal.csv_path}: {len(missing)} cells missing after scoring; pass --restart")
    return cells_from_outputs(info, journal.outputs(ids), margin=margin)


def _check_against_labels(score: SlideScore, labels: list[str | None], results: list[CellResult]) -> None:
    """The reference count and the review check into ``score`` when every label is a served class."""
    info = score.info
    if labels and all(lab in info.classes for lab in labels):
        score.reference = differential_count(info, labels)
        score.review = review_yield([c.class_name for c in results], [c.borderline for c in results], labels)


def _run_facts(
    score: SlideScore,
    client: SMRClient,
    slide: Slide,
    geom: PatchGeometry,
    detections_path: Path,
    mpp: float | None,
    level: int | None,
    *,
    fresh: int,
) -> dict[str, str]:
    """The report's facts of the run: slide, patches, scale, detections, server, review, timing."""
    info = score.info
    return {
        **_slide_facts(score.slide, slide, geom, info, mpp, level),
        "detections": f"{detections_path.name}: {score.detections} "
        f"({len(score.outside_ids)} outside the slide)",
        "server": f"{client.url}, model {info.name} ({len(info.classes)} classes, "
        f"lineages {', '.join(info.lineage_names)})",
        "review margin": f"{review_margin(info, client.margin):g} in SVM probability",
        **({"review against the reference": score.review.line()} if score.review is not None else {}),
        "this run": _timing_text(fresh, score.seconds, score.resumed),
    }


def _run_record(
    slide_path: Path,
    slide: Slide,
    detections_path: Path,
    detections: Sequence[Detection],
    geom: PatchGeometry,
) -> dict[str, Any]:
    """What identifies a scoring run in its journal: a resumed run must match it."""
    return {
        "slide": {
            "name": slide_path.name,
            "bytes": slide_path.stat().st_size,
            "dimensions": list(slide.dimensions),
        },
        "detections": {
            "name": detections_path.name,
            "sha256": slide_sha256(detections_path),
            "count": len(detections),
        },
        "geometry": geom.to_dict(),
    }


def _score_into_journal(
    client: SMRClient,
    slide: Slide,
    detections: Sequence[Detection],
    on_slide: list[int],
    todo: list[int],
    geom: PatchGeometry,
    journal: Journal,
    block: int,
    progress: bool,
) -> float:
    """Send the ``todo`` detections' patches and journal every answered batch; the inference seconds."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=len(on_slide),
            initial=len(on_slide) - len(todo),
            unit=" cells",
            desc=slide.path.name,
            dynamic_ncols=True,
            smoothing=0.1,
        )
    start = time.perf_counter()
    try:
        for ids, outputs in client.infer_batches(
            _batches(slide, detections, todo, geom, client.batch_size, block)
        ):
            journal.append(ids, outputs)
            if bar is not None:
                bar.update(len(ids))
    except InputError as exc:  # the slide could not be read; retrying will not help
        raise InputError(
            f"{exc}\n{len(journal)} of {len(on_slide)} cells were scored before and are kept in "
            f"{journal.csv_path}"
        ) from exc
    except SMRClientError as exc:
        raise ScoringInterrupted(
            f"{exc}\n{len(journal)} of {len(on_slide)} cells are scored and kept in {journal.csv_path}; "
            "run the same command again to continue",
            scored=len(journal),
            total=len(on_slide),
            journal=journal.csv_path,
        ) from exc
    finally:
        if bar is not None:
            bar.close()
    return time.perf_counter() - start


def _cropper(slide: Slide, detections: Sequence[Detection], geom: PatchGeometry):
    by_id = {d.id: d for d in detections}
    return lambda cell_id: crop_patch(slide, by_id[cell_id], geom)


def _slide_facts(
    slide_path: Path, slide: Slide, geom: PatchGeometry, info: ModelInfo, mpp: float | None, level: int | None
) -> dict[str, str]:
    return {
        "slide": f"{slide_path.name} ({slide.dimensions[0]} x {slide.dimensions[1]} px, "
        f"{slide.level_count} level(s), {_mpp_text(slide.mpp)})",
        "patches": f"{geom.size} px from level {geom.level} (region {geom.region} px"
        f"{', ' + _mpp_text(geom.mpp) if geom.mpp else ''})",
        "scale": _scale_text(info, mpp, level),
    }


def _timing_text(fresh: int, seconds: float, resumed: int) -> str:
    return (
        f"{fresh} cells in {seconds:.1f} s"
        + (f" ({fresh / seconds:.1f} cells/s)" if seconds > 0 and fresh else "")
        + (f"; {resumed} taken from an earlier run" if resumed else "")
    )


def _write_outputs(
    score: SlideScore,
    detections: Sequence[Detection],
    cells: dict[str, CellResult],
    geom: PatchGeometry,
    galleries: ReviewGalleries,
    facts: dict[str, str],
    margin: float,
    title: str | None,
) -> None:
    """cells.csv, cells.geojson, report.html and summary.json, each atomically; their paths into ``score``."""
    info, out_dir = score.info, score.out_dir
    score.paths = {
        "cells_csv": out_dir / CELLS_CSV,
        "geojson": out_dir / CELLS_GEOJSON,
        "report": out_dir / REPORT_HTML,
        "summary": out_dir / SUMMARY_JSON,
    }
    records = cell_records(info, detections, cells)
    atomic_write_text(score.paths["cells_csv"], csv_text(cell_fields(info), records))
    atomic_write_text(score.paths["geojson"], _geojson_text(info, detections, records))
    report = ReportData(
        title=title or f"SMR report: {score.slide.name}",
        info=info,
        count=score.count,
        positions=_positions_by_lineage(info, cells),
        reference=score.reference,
        outside_ids=score.outside_ids,
        facts=facts,
        provenance=score.provenance,
        galleries=galleries,
        margin=margin,
    )
    write_report(score.paths["report"], report)
    atomic_write_text(score.paths["summary"], json.dumps(_summary(score, geom), indent=2) + "\n")


def _geojson_text(info: ModelInfo, detections: Sequence[Detection], records: list[dict[str, Any]]) -> str:
    """``cells.geojson``: the scored cells for QuPath, with the detections' outlines where they had any."""
    geometries = {d.id: d.geometry for d in detections if d.geometry is not None}
    collection = cells_feature_collection(
        [r for r in records if r["status"] == "scored"], geometries, class_colors(info), info.lineage_names
    )
    return json.dumps(collection) + "\n"


def _positions_by_lineage(
    info: ModelInfo, cells: dict[str, CellResult]
) -> dict[str, tuple[list[float | None], list[str]]]:
    """The curve positions and classes of the cells of each lineage (the report's plots)."""
    return {
        lin.name: (
            [c.position for c in cells.values() if c.lineage == lin.name],
            [c.class_name for c in cells.values() if c.lineage == lin.name],
        )
        for lin in info.lineages
    }


def _summary(score: SlideScore, geom: PatchGeometry) -> dict[str, Any]:
    """``summary.json`` of the slide."""
    return {
        "slide": str(score.slide),
        "detections": score.detections,
        "scored": score.scored,
        "outside": len(score.outside_ids),
        "outside_ids": score.outside_ids,
        "count": score.count.to_dict(),
        "reference": None if score.reference is None else score.reference.to_dict(),
        "review_check": None if score.review is None else score.review.to_dict(),
        "geometry": geom.to_dict(),
        "provenance": score.provenance,
    }


def _scale_text(info: ModelInfo, mpp: float | None, level: int | None) -> str:
    model = "unknown" if info.microns_per_pixel is None else _mpp_text(info.microns_per_pixel)
    if level is not None:
        return f"level {level} read as it is (--level); the model was trained at {model}"
    if mpp is not None:
        return f"{_mpp_text(mpp)} as given (--mpp); the model was trained at {model}"
    return f"the model's own, {model}"


def _mpp_text(mpp: float | None) -> str:
    return "resolution unknown" if mpp is None else f"{mpp:.3g} µm/px"
