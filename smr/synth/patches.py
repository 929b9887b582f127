"""Writing a synthetic patch data set: class folders of PNGs, ``lineages.toml`` and ``manifest.csv``.

Layout of ``OUT``::

    OUT/<class>/<class>_<index>.png   one patch per cell, RGB, size x size
    OUT/lineages.toml                 the lineage spec (the paper's 15 classes) and the patches'
                                      scale, [imaging] microns_per_pixel = FIELD_UM / size
    OUT/manifest.csv                  path,class,lineage,maturity (lineage and maturity empty for
                                      the classes without a maturity order)
    OUT/synth.json                    the generator's settings (seed, size, field of view, ...)

The output depends on the seed and the settings only: every cell has its own random generator,
derived from ``(seed, cell index)``, so the bytes are the same for any number of workers. The set
is written to a hidden sibling folder and moved into place when complete, so an interrupted run
leaves nothing half-written and never touches an existing ``OUT``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from smr.core.lineages import PAPER_SPEC, LineageSpec

from .output import check_target, staged_folder
from .population import STREAM_CELL, STREAM_STAIN, CellDraw, cell_rng, plan_population, random_cell
from .render import FIELD_UM, render_patch
from .stain import Stain, sample_stain

__all__ = [
    "SynthSettings",
    "SynthSummary",
    "render_draw",
    "write_patches",
    "patch_mpp",
    "patch_spec",
    "MANIFEST_COLUMNS",
]

MANIFEST_COLUMNS = ("path", "class", "lineage", "maturity")
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SynthSettings:
    """Everything that determines a synthetic data set's bytes."""

    n_cells: int
    size: int = 96
    seed: int = 0
    min_per_class: int = 20
    label_noise: float = 0.1
    slides: int = 12  # patches come from this many virtual slides, each with its own stain
    stain_variation: float = 1.0  # 0: every slide stained alike
    neighbours: bool = True  # fragments of neighbouring cells at the patch border

    def validate(self) -> None:
        n_classes = len(PAPER_SPEC.classes)
        if self.n_cells < n_classes:
            raise ValueError(
                f"--n-cells must be at least {n_classes} (one cell per class), got {self.n_cells}"
            )
        if not 16 <= self.size <= 1024:
            raise ValueError(f"--size must be between 16 and 1024 pixels, got {self.size}")
        if self.min_per_class < 1:
            raise ValueError(f"--min-per-class must be at least 1, got {self.min_per_class}")
        if not (0 <= self.label_noise <= 1):
            raise ValueError(f"--label-noise must lie in [0, 1], got {self.label_noise}")
        if self.slides < 1:
            raise ValueError(f"--slides must be at least 1, got {self.slides}")
        if not (0 <= self.stain_variation <= 3):
            raise ValueError(f"--stain-variation must lie in [0, 3], got {self.stain_variation}")


@dataclass
class SynthSummary:
    out: Path
    draws: list[CellDraw]
    seconds: float

    def counts(self) -> dict[str, int]:
        counts = Counter(d.cls for d in self.draws)
        return {c: counts.get(c, 0) for c in PAPER_SPEC.classes}


@lru_cache(maxsize=64)
def _slide_stain(seed: int, slide: int, variation: float) -> Stain:
    return sample_stain(cell_rng(seed, STREAM_STAIN, slide), variation)


def render_draw(draw: CellDraw, settings: SynthSettings) -> np.ndarray:
    """The patch of one planned cell (depends on the settings and ``draw`` only)."""
    rng = cell_rng(settings.seed, STREAM_CELL, draw.index)
    slide = int(rng.integers(settings.slides))
    stain = _slide_stain(settings.seed, slide, settings.stain_variation)
    neighbours = random_cell if settings.neighbours else None
    return render_patch(draw.cls, draw.lineage, draw.maturity, settings.size, stain, rng, neighbours)


def patch_mpp(size: int) -> float:
    """Micrometres per pixel of a ``size`` px patch: every patch shows :data:`FIELD_UM` micrometres."""
    return FIELD_UM / size


def patch_spec(size: int) -> LineageSpec:
    """The spec written beside ``size`` px patches: the paper's classes and the patches' scale."""
    return dataclasses.replace(PAPER_SPEC, microns_per_pixel=patch_mpp(size))


def relative_path(draw: CellDraw) -> str:
    return f"{draw.cls}/{draw.cls}_{draw.index:06d}.png"


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _write_chunk(args: tuple[Path, SynthSettings, list[CellDraw]]) -> int:
    root, settings, draws = args
    for draw in draws:
        (root / relative_path(draw)).write_bytes(png_bytes(render_draw(draw, settings)))
    return len(draws)


def _manifest_text(draws: list[CellDraw]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for draw in sorted(draws, key=relative_path):
        maturity = "" if math.isnan(draw.maturity) else f"{draw.maturity:.6f}"
        writer.writerow([relative_path(draw), draw.cls, draw.lineage or "", maturity])
    return buf.getvalue()


def write_patches(
    out: str | os.PathLike,
    settings: SynthSettings,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
) -> SynthSummary:
    """Generate the data set described by ``settings`` into ``out``."""
    from tqdm import tqdm

    settings.validate()
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    check_target(out, overwrite)
    start = time.perf_counter()
    draws = plan_population(
        settings.n_cells,
        settings.seed,
        min_per_class=settings.min_per_class,
        label_noise=settings.label_noise,
    )
    with staged_folder(out) as tmp:
        for name in PAPER_SPEC.classes:
            (tmp / name).mkdir()
        chunk = max(1, min(64, len(draws) // (4 * workers)))
        jobs = [(tmp, settings, draws[i : i + chunk]) for i in range(0, len(draws), chunk)]
        with tqdm(total=len(draws), unit="cell", desc="smr synth", disable=not progress) as bar:
            if workers == 1:
                for job in jobs:
                    bar.update(_write_chunk(job))
            else:
                with multiprocessing.get_context("spawn").Pool(workers) as pool:
                    for done in pool.imap_unordered(_write_chunk, jobs):
                        bar.update(done)
        (tmp / "lineages.toml").write_text(patch_spec(settings.size).to_toml(), encoding="utf-8")
        (tmp / "manifest.csv").write_text(_manifest_text(draws), encoding="utf-8")
        meta = {
            "generator": "smr.synth",
            "version": GENERATOR_VERSION,
            "settings": asdict(settings),
            "field_um": FIELD_UM,
            "mpp": patch_mpp(settings.size),
            "stages": "each lineage's stages split maturity [0, 1] into equal intervals",
        }
        (tmp / "synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return SynthSummary(out, draws, time.perf_counter() - start)
