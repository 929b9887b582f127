"""Lazy slide reading: whole-slide images via tiffslide (or OpenSlide, when installed), plain images via PIL.

A :class:`Slide` reads rectangular regions of one pyramid level on demand; only the tiles a region
touches are decoded, so a slide is never loaded whole. Regions may reach beyond the slide: what
lies outside is filled with white (the background of a brightfield smear).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["Slide", "TiffSlideReader", "OpenSlideReader", "ImageSlide", "open_slide", "PLAIN_IMAGE_SUFFIXES"]

PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FILL = 255


class Slide(ABC):
    """A pyramid of levels; level 0 has the full resolution."""

    path: Path
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level
    level_downsamples: tuple[float, ...]
    mpp: float | None  # microns per pixel at level 0, when the file says

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @abstractmethod
    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read an in-bounds region of ``level`` as an (height, width, channels) array."""

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 region (height, width, 3) of ``level`` with top-left (x, y) in *that level's* pixels.

        Parts outside the slide are white.
        """
        if not 0 <= level < self.level_count:
            raise InputError(f"{self.path}: level {level} does not exist; levels: 0..{self.level_count - 1}")
        w_lvl, h_lvl = self.level_dimensions[level]
        out = np.full((height, width, 3), FILL, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, w_lvl), min(y + height, h_lvl)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            pixels = self._read(level, x0, y0, x1 - x0, y1 - y0)
        except InputError:
            raise
        except Exception as exc:  # a corrupt tile, a truncated file, a codec the reader lacks
            raise InputError(
                f"{self.path}: cannot read level {level} at x={x0}, y={y0} ({x1 - x0}x{y1 - y0} px): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        region = _as_rgb(pixels, self.path)
        out[y0 - y : y1 - y, x0 - x : x1 - x] = region
        return out

    def close(self) -> None:  # noqa: B027 - optional for subclasses
        pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_rgb(region: np.ndarray, path: Path) -> np.ndarray:
    if region.dtype != np.uint8:
        raise InputError(f"{path}: pixels are {region.dtype}; SMR reads 8-bit RGB slides")
    if region.ndim == 2:
        return np.repeat(region[:, :, None], 3, axis=2)
    channels = region.shape[2]
    if channels == 3:
        return region
    if channels == 4:  # RGBA: composite on white
        alpha = region[:, :, 3:4].astype(np.float32) / 255.0
        return (region[:, :, :3] * alpha + FILL * (1 - alpha) + 0.5).astype(np.uint8)
    if channels == 1:
        return np.repeat(region, 3, axis=2)
    raise InputError(f"{path}: {channels} channels per pixel; SMR reads RGB slides")


def _mpp_from(properties: Any, keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = properties.get(key)
        try:
            mpp = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(mpp) and mpp > 0:
            return mpp
    return None


class TiffSlideReader(Slide):
    """SVS, NDPI, pyramidal (generic tiled) TIFF and friends, via tiffslide."""

    def __init__(self, path: str | Path) -> None:
        import tifffile
        import tiffslide

        self.path = Path(path)
        try:  # tiffslide leaks its file handle on some broken files: look first with tifffile
            with tifffile.TiffFile(self.path) as tif:
                if not tif.series or not len(tif.series[0].levels[0].shape):
                    raise InputError(f"{self.path}: a TIFF without an image")
        except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
            raise InputError(f"{self.path}: not a readable TIFF-based slide ({exc})") from None
        try:
            self._slide = tiffslide.TiffSlide(str(self.path))
        except Exception as exc:  # tiffslide raises many kinds for unreadable files
            raise InputError(f"{self.path}: tiffslide cannot open it ({type(exc).__name__}: {exc})") from None
        self.level_dimensions = tuple(tuple(map(int, d)) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.mpp = _mpp_from(self._slide.properties, ("tiffslide.mpp-x", "tiffslide.mpp-y"))

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        # tiffslide takes the location in level-0 pixels and maps it with int(loc / downsample):
        # ceil(x * ds) maps back to exactly x for any ds >= 1.
        ds = self.level_downsamples[level]
        location = (math.ceil(x * ds - 1e-9), math.ceil(y * ds - 1e-9))
        return np.asarray(self._slide.read_region(location, level, (width, height), as_array=True))

    def close(self) -> None:
        self._slide.close()


class OpenSlideReader(Slide):
    """MRXS, SCN, VMS and the other formats only OpenSlide reads (needs ``openslide-python``)."""

    def __init__(self, path: str | Path) -> None:
        import openslide

        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideError as exc:
            raise InputError(f"{self.path}: OpenSlide cannot open it ({exc})") from None
        self.level_dimensions = tuple(tuple(map(int, d)) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.mpp = _mpp_from(self._slide.properties, ("openslide.mpp-x", "openslide.mpp-y"))

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        location = (round(x * ds), round(y * ds))
        return np.asarray(self._slide.read_region(location, level, (width, height)))

    def close(self) -> None:
        self._slide.close()


class ImageSlide(Slide):
    """A plain PNG/JPEG/BMP image as a one-level slide (decoded on first read; such files are small)."""

    def __init__(self, path: str | Path) -> None:
        from PIL import Image, UnidentifiedImageError

        self.path = Path(path)
        try:
            with Image.open(self.path) as im:
                self.level_dimensions = ((int(im.width), int(im.height)),)
                dpi = im.info.get("dpi")
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{self.path}: not a readable image ({exc})") from None
        self.level_downsamples = (1.0,)
        # An image's DPI is rarely the microscope's resolution; trust it only when it looks like one.
        self.mpp = None
        if dpi and float(dpi[0]) > 5000:
            self.mpp = 25400.0 / float(dpi[0])
        self._pixels: np.ndarray | None = None

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        if self._pixels is None:
            from PIL import Image

            with Image.open(self.path) as im:
                self._pixels = np.asarray(im.convert("RGB"))
        return self._pixels[y : y + height, x : x + width]


def open_slide(path: str | Path) -> Slide:
    """Open a slide with the first reader that understands it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such slide")
    if path.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        return ImageSlide(path)
    errors = []
    try:
        return TiffSlideReader(path)
    except InputError as exc:
        errors.append(str(exc))
    try:
        return OpenSlideReader(path)
    except ImportError:
        errors.append(
            "OpenSlide is not installed (pip install openslide-python openslide-bin) for MRXS and others"
        )
    except InputError as exc:
        errors.append(str(exc))
    raise InputError(f"{path}: cannot read this slide:\n  " + "\n  ".join(errors))
