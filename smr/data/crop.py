"""Training patches from annotated slides: each labelled detection cropped into a folder data set.

A laboratory's annotations usually live on its slides (QuPath detections with a classification,
or a CSV of centres and classes). :func:`crop_slide` cuts every labelled detection of one slide
into ``OUT/<class>/<slide>_<id>.png`` at a chosen physical scale, exactly as ``smr score-slide``
crops the cells it scores, and writes ``OUT/lineages.toml`` with that scale. Patches then match
what the server will see on the laboratory's slides (scanner, stain, focus, compression).

Several slides go into one data set by calling it once per slide with the same ``out``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from smr.core.lineages import LineageSpec

__all__ = ["CropResult", "crop_slide"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropResult:
    written: Counter[str]  # patches written per class
    unlabelled: int  # detections without a class (left out)
    unknown: Counter[str]  # detections whose class the spec does not know (left out), per class
    outside: int  # detections whose patch would leave the slide (left out)


def _safe(text: str) -> str:
    """A file-name-safe form of a slide name or detection id."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip(".") or "_"


def crop_slide(
    slide_path: str | Path,
    detections_path: str | Path,
    out: str | Path,
    spec: LineageSpec,
    *,
    size: int,
    mpp: float,
    slide_mpp: float | None = None,
) -> CropResult:
    """Crop every labelled detection of one slide into the folder data set ``out``.

    ``size``: patch side in pixels; ``mpp``: microns per pixel of the patches (so the field of view
    is ``size * mpp`` µm, which the trained model then states). Raises
    :class:`smr.clients.errors.InputError` (unreadable slide or detections, unknown slide
    resolution) and :class:`ValueError` when ``out`` already holds a data set of another spec or
    scale: nothing is written then.
    """
    from PIL import Image

    from smr.clients.detections import read_detections
    from smr.clients.patches import inside, iter_patches, patch_geometry
    from smr.clients.slides import open_slide
    from smr.core.lineages import load_spec

    out = Path(out)
    wanted = dataclasses.replace(spec, microns_per_pixel=mpp)
    spec_file = out / "lineages.toml"
    if spec_file.is_file():
        existing = load_spec(spec_file)
        if existing != wanted:
            raise ValueError(
                f"{out} already holds a data set with another lineages.toml or scale "
                f"({existing.microns_per_pixel} µm/px); crop into a new folder"
            )
    detections = read_detections(detections_path)
    known = set(spec.classes)
    keep = [i for i, d in enumerate(detections) if d.label in known]
    unlabelled = sum(1 for d in detections if not d.label)
    unknown = Counter(d.label for d in detections if d.label and d.label not in known)
    written: Counter[str] = Counter()
    with open_slide(slide_path) as slide:
        geom = patch_geometry(slide, size, mpp=mpp, slide_mpp=slide_mpp)
        on_slide = [i for i in keep if inside(slide, detections[i])]
        out.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(wanted.to_toml())
        stem = _safe(Path(slide_path).stem)
        for i, patch in iter_patches(slide, detections, on_slide, geom):
            d = detections[i]
            folder = out / d.label
            folder.mkdir(exist_ok=True)
            Image.fromarray(patch).save(folder / f"{stem}_{_safe(d.id)}.png")
            written[d.label] += 1
    if unknown:
        log.warning("left out %d detections of classes not in the spec: %s", unknown.total(), dict(unknown))
    return CropResult(written, unlabelled, unknown, len(keep) - len(on_slide))
