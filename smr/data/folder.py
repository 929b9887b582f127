"""Folder datasets: ``ROOT/<class>/**/<image>`` plus ``ROOT/lineages.toml``.

Each immediate, non-hidden sub-folder of ``ROOT`` is a class folder, named exactly as in the lineage
spec (folders listed under the spec's ``[ignore]`` are skipped). Images are found at any depth
below a class folder (``BLA/0001-1000/BLA_00001.jpg`` works as is); the extensions are
:data:`IMAGE_EXTENSIONS`, in any case. Hidden files and folders (``.DS_Store``, ``._x.jpg``) are
skipped. An optional ``ROOT/manifest.csv`` (``path,class,lineage,maturity``; written by
``smr synth``) gives each image's true maturity.

A corrupt or unreadable image never stops a scan: it is left out and reported in
:attr:`FolderDataset.problems` as ``"path: reason"``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from smr.core.lineages import LineageSpec, SpecError, load_spec

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPEC_FILENAME",
    "MANIFEST_FILENAME",
    "DatasetError",
    "ImageError",
    "ImageInfo",
    "Sample",
    "FolderDataset",
    "class_folders",
    "find_images",
    "inspect_image",
    "load_image",
    "resolve_spec",
    "median_image_size",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SPEC_FILENAME = "lineages.toml"
MANIFEST_FILENAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "class", "lineage", "maturity")
_TIFF_EXTENSIONS = (".tif", ".tiff")


class DatasetError(ValueError):
    """A folder cannot be used as a data set (missing folder or spec, bad manifest, ...)."""


class ImageError(ValueError):
    """An image file cannot be read or decoded."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # index into spec.classes
    class_name: str
    maturity: float  # true maturity in [0, 1] from manifest.csv; NaN when unknown


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect_image` learns from decoding a file."""

    height: int
    width: int
    mode: str  # PIL mode ("RGB", "L", "I;16", ...) or "<dtype>x<channels>" for TIFFs
    format: str  # "JPEG", "PNG", "TIFF"


# -- discovery --------------------------------------------------------------------------------------
def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def class_folders(root: str | os.PathLike) -> list[str]:
    """Names of the immediate, non-hidden sub-folders of ``root``, sorted."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not _hidden(p.name))


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Image files at any depth below ``folder`` (case-insensitive extensions), sorted by path."""
    folder = Path(folder)
    out: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        for name in filenames:
            if not _hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                out.append(Path(dirpath, name))
    out.sort()
    return out


# -- images -----------------------------------------------------------------------------------------
def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in _TIFF_EXTENSIONS


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.pages:
                raise ImageError(path, "TIFF has no pages")
            return tif.pages[0].asarray()
    except ImageError:
        raise
    except Exception as e:  # tifffile raises many kinds for damaged files
        raise ImageError(path, f"cannot read TIFF: {e}") from None


def _to_uint8(a: np.ndarray, path: Path) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        lo = min(int(info.min), 0)
        return np.round((a.astype(np.float64) - lo) * 255.0 / (int(info.max) - lo)).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ImageError(path, "image contains NaN or infinite values")
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0  # [0, 1] floats, else 0..255
        return np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
    raise ImageError(path, f"unsupported pixel type {a.dtype}")


def _array_to_rgb(a: np.ndarray, path: Path) -> np.ndarray:
    """Any (H, W), (H, W, C) or planar (C, H, W) array with C in 1..4 -> uint8 (H, W, 3)."""
    if a.ndim == 3 and a.shape[0] in (1, 2, 3, 4) and a.shape[2] not in (1, 2, 3, 4):
        a = np.moveaxis(a, 0, -1)  # planar TIFF
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ImageError(path, f"unsupported image shape {a.shape}; expected grey, grey+alpha, RGB or RGBA")
    a = _to_uint8(a, path)
    colour, alpha = (a[:, :, :1], a[:, :, 1:2]) if a.shape[2] in (1, 2) else (a[:, :, :3], a[:, :, 3:4])
    if alpha.shape[2]:  # composite over white, the background of a stained smear
        w = alpha.astype(np.float32) / 255.0
        colour = np.round(colour * w + 255.0 * (1.0 - w)).astype(np.uint8)
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    return np.ascontiguousarray(colour)


def _pil_to_rgb(im: Image.Image, path: Path) -> np.ndarray:
    if im.mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if im.mode in ("P", "PA", "LA", "RGBA", "La", "RGBa", "CMYK", "YCbCr", "1"):
        im = im.convert("RGBA" if ("A" in im.mode or "a" in im.mode or im.mode == "P") else "RGB")
        return _array_to_rgb(np.asarray(im), path)
    if im.mode == "L":
        return _array_to_rgb(np.asarray(im), path)
    if im.mode.startswith("I;16"):
        return _array_to_rgb(np.asarray(im).astype(np.uint16), path)
    if im.mode in ("I", "F"):
        return _array_to_rgb(np.asarray(im), path)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _resize(rgb: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    h, w = (size, size) if isinstance(size, int) else size
    if (h, w) == rgb.shape[:2]:
        return rgb
    im = Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8).copy()


def load_image(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as a uint8 RGB array of shape (H, W, 3).

    Grey, grey+alpha, palette, RGBA (composited over white) and 16-bit images are converted.
    ``size`` (an int for square, or ``(H, W)``) resizes with bilinear (antialiased) filtering.
    Raises :class:`ImageError` naming the file for anything unreadable.
    """
    path = Path(path)
    if size is not None:
        dims = (size, size) if isinstance(size, int) else tuple(size)
        if len(dims) != 2 or not all(isinstance(d, int | np.integer) and d > 0 for d in dims):
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    if not path.is_file():
        raise ImageError(path, "no such file")
    if _is_tiff(path):
        rgb = _array_to_rgb(_read_tiff(path), path)
    else:
        try:
            with Image.open(path) as im:
                im.load()
                rgb = _pil_to_rgb(im, path)
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(path, "not an image file PIL can identify") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageError(path, f"cannot decode: {e}") from None
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(path, f"image is empty ({rgb.shape[0]}x{rgb.shape[1]})")
    return rgb if size is None else _resize(rgb, size)


def inspect_image(path: str | os.PathLike) -> ImageInfo:
    """Decode ``path`` cheaply enough to catch damage (JPEGs at 1/8 scale) and report its size.

    Raises :class:`ImageError` for an unreadable, truncated or empty file.
    """
    path = Path(path)
    if _is_tiff(path):
        a = _read_tiff(path)
        rgb = _array_to_rgb(a, path)  # also validates shape and dtype
        channels = a.shape[2] if a.ndim == 3 and rgb.shape[:2] == a.shape[:2] else (1 if a.ndim == 2 else 0)
        return ImageInfo(rgb.shape[0], rgb.shape[1], f"{a.dtype}x{channels or a.shape[0]}", "TIFF")
    try:
        with Image.open(path) as im:
            width, height = im.size
            mode, fmt = im.mode, im.format or "?"
            if fmt == "JPEG":
                im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            im.load()
    except UnidentifiedImageError:
        raise ImageError(path, "not an image file PIL can identify") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(path, f"cannot decode: {e}") from None
    if width == 0 or height == 0:
        raise ImageError(path, f"image is empty ({height}x{width})")
    return ImageInfo(height, width, mode, fmt)


def _header_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header only (no decoding)."""
    if _is_tiff(path):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
        except Exception as e:  # tifffile raises many kinds for damaged files
            raise ImageError(path, f"cannot read TIFF: {e}") from None
        planar = len(shape) == 3 and shape[0] in (1, 2, 3, 4) and shape[2] not in (1, 2, 3, 4)
        return (int(shape[1]), int(shape[2])) if planar else (int(shape[0]), int(shape[1]))
    try:
        with Image.open(path) as im:
            return int(im.height), int(im.width)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(path, f"cannot read: {e}") from None


def median_image_size(paths: Sequence[str | os.PathLike], limit: int = 500) -> tuple[float, float] | None:
    """Median (height, width) in pixels of the images at ``paths`` (headers only; ``None`` for none).

    At most ``limit`` images, evenly spaced over ``paths``, are looked at; unreadable ones are skipped.
    """
    paths = list(paths)
    if not paths:
        return None
    step = max(1, math.ceil(len(paths) / limit))
    sizes = []
    for p in paths[::step]:
        try:
            sizes.append(_header_size(Path(p)))
        except ImageError:
            continue
    if not sizes:
        return None
    h, w = np.median(np.asarray(sizes, dtype=np.float64), axis=0)
    return float(h), float(w)


# -- spec and manifest ------------------------------------------------------------------------------
def resolve_spec(root: str | os.PathLike, spec: LineageSpec | str | os.PathLike | None) -> LineageSpec:
    """The spec passed in (object or path), else ``ROOT/lineages.toml``."""
    if isinstance(spec, LineageSpec):
        return spec
    if spec is not None:
        return load_spec(spec)
    path = Path(root) / SPEC_FILENAME
    if not path.is_file():
        raise DatasetError(
            f"{root}: no {SPEC_FILENAME}; write one naming the class folders (see docs/data.md) "
            "or pass a spec file"
        )
    return load_spec(path)


def _read_manifest(root: Path) -> dict[str, tuple[str, float]]:
    """``relative posix path -> (class, maturity)`` from ``ROOT/manifest.csv``; empty when absent."""
    path = root / MANIFEST_FILENAME
    if not path.is_file():
        return {}
    out: dict[str, tuple[str, float]] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("path", "class", "maturity") if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(
                    f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(MANIFEST_COLUMNS)}"
                )
            for line, row in enumerate(reader, start=2):
                raw = (row.get("maturity") or "").strip()
                try:
                    maturity = float(raw) if raw else math.nan
                except ValueError:
                    raise DatasetError(f"{path}:{line}: maturity {raw!r} is not a number") from None
                key = Path((row.get("path") or "").strip()).as_posix()
                out[key] = ((row.get("class") or "").strip(), maturity)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    return out


# -- the data set -----------------------------------------------------------------------------------
@dataclass
class FolderDataset:
    """The usable images of a folder data set, labelled in the spec's class order."""

    root: Path
    spec: LineageSpec
    samples: list[Sample]
    problems: list[str] = field(default_factory=list)

    @classmethod
    def scan(
        cls,
        root: str | os.PathLike,
        spec: LineageSpec | str | os.PathLike | None = None,
        *,
        verify: bool = True,
        progress: bool = False,
    ) -> FolderDataset:
        """Find every image below ``root``'s class folders.

        ``spec``: a :class:`LineageSpec`, a path to a ``lineages.toml``, or None for ``ROOT/lineages.toml``.
        ``verify`` decodes every image (JPEGs at 1/8 scale) and moves damaged ones to ``problems``.
        Raises :class:`DatasetError` / :class:`SpecError` when the folder or spec cannot be used,
        including class folders that do not match the spec.
        """
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: not a folder")
        spec = resolve_spec(root, spec)
        folders = [n for n in class_folders(root) if n not in spec.ignore]
        try:
            spec.check_folders(folders)
        except SpecError as e:
            raise SpecError(f"{root}: {e}") from None
        manifest = _read_manifest(root)

        problems: list[str] = []
        found: list[tuple[Path, int, str]] = []
        for label, name in enumerate(spec.classes):
            images = find_images(root / name)
            if not images:
                problems.append(f"{root / name}: class {name!r} has no images")
            found += [(p, label, name) for p in images]

        items: Iterable[tuple[Path, int, str]] = found
        if progress and verify:
            from tqdm import tqdm

            items = tqdm(found, desc=f"checking {root.name}", unit="img")
        samples: list[Sample] = []
        for path, label, name in items:
            if verify:
                try:
                    inspect_image(path)
                except ImageError as e:
                    problems.append(f"{path}: {e.reason}")
                    continue
            maturity = math.nan
            if manifest:
                rel = path.relative_to(root).as_posix()
                entry = manifest.get(rel)
                if entry is not None:
                    if entry[0] and entry[0] != name:
                        problems.append(
                            f"{path}: {MANIFEST_FILENAME} says class {entry[0]!r}, folder says {name!r}; "
                            "maturity ignored"
                        )
                    else:
                        maturity = entry[1]
            samples.append(Sample(path, label, name, maturity))
        return cls(root, spec, samples, problems)

    # -- views ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.samples]

    @property
    def labels(self) -> np.ndarray:
        return np.fromiter((s.label for s in self.samples), dtype=np.int64, count=len(self.samples))

    @property
    def counts(self) -> np.ndarray:
        """Number of samples per class, in the spec's class order."""
        return np.bincount(self.labels, minlength=len(self.spec.classes)).astype(np.int64)

    @property
    def name(self) -> str:
        """The data set's name: its root folder's name."""
        return Path(self.root).resolve().name

    def median_image_size(self) -> tuple[float, float] | None:
        """Median (height, width) of the images in pixels, from their headers (see module function)."""
        return median_image_size(self.paths)

    @property
    def maturities(self) -> np.ndarray:
        return np.fromiter((s.maturity for s in self.samples), dtype=np.float64, count=len(self.samples))

    def subset(self, indices: Sequence[int] | np.ndarray) -> FolderDataset:
        """A data set with the samples at ``indices`` (same root, spec and problems)."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self.samples),):
                raise IndexError(f"boolean mask of shape {idx.shape} for {len(self.samples)} samples")
            idx = np.flatnonzero(idx)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"indices must be integers, got {idx.dtype}")
        return FolderDataset(self.root, self.spec, [self.samples[int(i)] for i in idx], list(self.problems))
