"""Cropping the patch around each detection, at the resolution the model was trained on.

Which pyramid level is read, and how a region there maps to the server's ``size`` x ``size``
patch, is a :class:`PatchGeometry`. :func:`iter_patches` groups detections into blocks of the level
and reads each block's bounding box once, so neighbouring cells share decoded tiles and memory
stays bounded by one block, however large the slide.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .detections import Detection
from .errors import InputError
from .slides import Slide

__all__ = [
    "PatchGeometry",
    "patch_geometry",
    "slide_resolution",
    "inside",
    "patch_origin",
    "crop_patch",
    "iter_patches",
    "MAX_RESCALE",
]

DEFAULT_BLOCK = 2048
#: The most a patch is shrunk or enlarged when it is resized to the server's size. Beyond it, a
#: microns-per-pixel is wrong (a typo, nanometres) and the region read would not fit in memory.
MAX_RESCALE = 16.0


@dataclass(frozen=True)
class PatchGeometry:
    """Read a ``region`` x ``region`` square of ``level`` around each centre, resize it to ``size``."""

    level: int
    downsample: float  # of ``level`` relative to level 0
    region: int  # side of the square read, in pixels of ``level``
    size: int  # side of the patch sent to the server
    mpp: float | None  # microns per pixel of the patch sent, when the slide's resolution is known

    def to_dict(self) -> dict:
        return {
            "level": self.level,
            "downsample": self.downsample,
            "region": self.region,
            "size": self.size,
            "mpp": self.mpp,
        }


def patch_geometry(
    slide: Slide,
    size: int,
    *,
    mpp: float | None = None,
    level: int | None = None,
    slide_mpp: float | None = None,
) -> PatchGeometry:
    """Where and how to read patches of ``size`` pixels.

    ``mpp``: the microns per pixel the model expects. The finest level no finer than needed is read
    and resized (needs the slide's resolution: from its metadata or ``slide_mpp``). ``level``: read
    that level as it is. One of the two is needed; :class:`InputError` for neither, both, or a
    rescale beyond :data:`MAX_RESCALE`.
    """
    if mpp is not None and level is not None:
        raise InputError("give either a microns-per-pixel (--mpp) or a level (--level), not both")
    base_mpp = slide_mpp if slide_mpp is not None else slide.mpp
    if level is not None:
        if not 0 <= level < slide.level_count:
            raise InputError(
                f"{slide.path}: level {level} does not exist; levels: 0..{slide.level_count - 1}"
            )
        ds = slide.level_downsamples[level]
        return PatchGeometry(level, ds, size, size, None if base_mpp is None else base_mpp * ds)
    if mpp is None:
        raise InputError(
            "give the microns per pixel the model expects (--mpp) or a pyramid level to read as it is "
            "(--level)"
        )
    if not (math.isfinite(mpp) and mpp > 0):
        raise InputError(f"microns per pixel must be > 0, got {mpp}")
    base_mpp = slide_resolution(slide, slide_mpp)
    factor = mpp / base_mpp  # level-0 pixels per patch pixel
    best = max((i for i, ds in enumerate(slide.level_downsamples) if ds <= factor * (1 + 1e-3)), default=0)
    ds = slide.level_downsamples[best]
    rescale = factor / ds  # pixels of the level per patch pixel
    if not 1 / MAX_RESCALE <= rescale <= MAX_RESCALE:
        raise InputError(
            f"patches at {mpp:g} µm/px from a slide at {base_mpp:g} µm/px would be resized {rescale:.3g}x "
            f"(level {best}); SMR resizes at most {MAX_RESCALE:g}x either way: check --mpp and --slide-mpp"
        )
    region = max(1, round(size * rescale))
    return PatchGeometry(best, ds, region, size, mpp)


def slide_resolution(slide: Slide, slide_mpp: float | None = None) -> float:
    """The slide's microns per pixel at level 0: ``slide_mpp`` when given, else its file's.

    :class:`InputError` (one line) when neither says.
    """
    mpp = slide_mpp if slide_mpp is not None else slide.mpp
    if mpp is None:
        raise InputError(
            f"{slide.path}: the slide does not state its resolution (microns per pixel); pass --slide-mpp UM "
            "(e.g. 0.25 for a 40x scan), or read a pyramid level as it is with --level N"
        )
    return mpp


def inside(slide: Slide, detection: Detection) -> bool:
    """Whether the detection's centre lies on the slide (level 0)."""
    width, height = slide.dimensions
    return 0 <= detection.x < width and 0 <= detection.y < height


def patch_origin(detection: Detection, geom: PatchGeometry) -> tuple[int, int]:
    """Top-left corner, in pixels of ``geom.level``, of the square centred on the detection."""
    cx, cy = detection.x / geom.downsample, detection.y / geom.downsample
    return math.floor(cx - geom.region / 2 + 0.5), math.floor(cy - geom.region / 2 + 0.5)


def _finish(region: np.ndarray, geom: PatchGeometry) -> np.ndarray:
    if geom.region == geom.size:
        return np.ascontiguousarray(region)
    return np.asarray(Image.fromarray(region).resize((geom.size, geom.size), Image.Resampling.BILINEAR))


def crop_patch(slide: Slide, detection: Detection, geom: PatchGeometry) -> np.ndarray:
    """The patch of one detection (for single cells; use :func:`iter_patches` for many)."""
    x, y = patch_origin(detection, geom)
    return _finish(slide.read_region(geom.level, x, y, geom.region, geom.region), geom)


def iter_patches(
    slide: Slide,
    detections: Sequence[Detection],
    indices: Iterable[int],
    geom: PatchGeometry,
    *,
    block: int = DEFAULT_BLOCK,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, patch)`` for ``detections[index]`` for each index, block by block.

    Each block (``block`` x ``block`` pixels of the level, by patch origin) is read once as the
    bounding box of its patches; within a block, patches come in index order.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
    for i in indices:
        x, y = patch_origin(detections[i], geom)
        groups[(y // block, x // block)].append((i, x, y))
    r = geom.region
    for key in sorted(groups):
        members = sorted(groups[key])
        x0 = min(m[1] for m in members)
        y0 = min(m[2] for m in members)
        x1 = max(m[1] for m in members) + r
        y1 = max(m[2] for m in members) + r
        pixels = slide.read_region(geom.level, x0, y0, x1 - x0, y1 - y0)
        for i, x, y in members:
            yield i, _finish(pixels[y - y0 : y - y0 + r, x - x0 : x - x0 + r], geom)
