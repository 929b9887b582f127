"""Checking, resizing and loading the RGB patches that go to the server."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

__all__ = ["IMAGE_SUFFIXES", "check_image", "resize_image", "stack_images", "load_image", "find_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 array to ``size`` x ``size`` (bilinear, PIL)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def check_image(image: np.ndarray, size: int, *, resize: bool, what: str = "image") -> np.ndarray:
    """``image`` as a ``size`` x ``size`` x 3 uint8 array, or :class:`InputError` saying why not."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"{what}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"{what}: expected dtype uint8 (RGB 0..255), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{what}: expected an RGB array of shape (H, W, 3), got shape {image.shape}")
    if image.shape[0] != size or image.shape[1] != size:
        if not resize:
            raise InputError(
                f"{what}: size {image.shape[1]}x{image.shape[0]} but the server expects {size}x{size}; "
                "crop it to that size or let the client resize (resize=True / --resize)"
            )
        image = resize_image(image, size)
    return image


def stack_images(images: Sequence[np.ndarray], size: int, *, resize: bool, offset: int = 0) -> np.ndarray:
    """Check (and resize) ``images`` and stack them into one contiguous (N, size, size, 3) batch."""
    batch = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        batch[i] = check_image(image, size, resize=resize, what=f"image {offset + i}")
    return batch


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as an RGB uint8 array (grey and RGBA images are converted)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("RGB", "L", "RGBA", "P", "LA", "I;16", "I", "CMYK", "YCbCr"):
                raise InputError(f"{path}: unsupported image mode {im.mode}")
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files among ``paths``; folders are searched recursively (sorted, so the order is stable)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(
                sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            )
        elif p.is_file():
            found.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return found
