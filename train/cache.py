"""Decoded training images kept on disk: decode and resize each image once, not once per run.

A data set's images are read with :func:`smr.data.folder.load_image`, resized whole to the network's
input size and stored as one uint8 array ``(N, size, size, 3)`` in ``.npy`` format, which later runs
open memory-mapped (``np.load(mmap_mode="r")``). The file's name is a SHA-256 over the cache format,
the size and, per image, its resolved path, byte size and modification time, so an edited, added,
removed or reordered image makes a new entry rather than stale pixels.

The default folder is ``$SMR_CACHE_DIR`` or ``~/.cache/smr/images``. Old entries are not deleted
automatically; the folder can be removed at any time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["CACHE_ENV", "default_cache_dir", "cache_key", "decode_images", "cached_images"]

log = logging.getLogger(__name__)

#: Environment variable naming the cache folder.
CACHE_ENV = "SMR_CACHE_DIR"
# Bump when the decoding or resizing of smr.data.folder.load_image changes.
_FORMAT = "smr-image-cache-1"


def default_cache_dir() -> Path:
    """``$SMR_CACHE_DIR``, else ``~/.cache/smr/images``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "smr" / "images"


def cache_key(paths: Sequence[str | os.PathLike], size: int) -> str:
    """SHA-256 of the cache format, ``size`` and each file's resolved path, byte size and mtime."""
    h = hashlib.sha256(f"{_FORMAT}\n{int(size)}\n".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{Path(p).resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _decode_into(out: np.ndarray, paths: Sequence[str | os.PathLike], size: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    from smr.data.folder import load_image

    for i, p in enumerate(tqdm(paths, desc="decoding images", unit="img", leave=False, disable=not progress)):
        out[i] = load_image(p, size=size)


def decode_images(paths: Sequence[str | os.PathLike], size: int, *, progress: bool = False) -> np.ndarray:
    """Decode and resize every image into memory, uint8 ``(N, size, size, 3)`` (no cache)."""
    out = np.empty((len(paths), int(size), int(size), 3), dtype=np.uint8)
    _decode_into(out, paths, size, progress)
    return out


def cached_images(
    paths: Sequence[str | os.PathLike],
    size: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> np.ndarray:
    """All images as uint8 ``(N, size, size, 3)``, decoded once and memory-mapped afterwards.

    ``cache_dir=None`` uses :func:`default_cache_dir`. When the folder cannot be written the
    images are decoded into memory (logged). Decoding errors name the file.
    """
    paths = list(paths)
    shape = (len(paths), int(size), int(size), 3)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / f"{cache_key(paths, size)}.npy"
    if target.is_file():
        try:
            arr = np.load(target, mmap_mode="r")
            if arr.shape == shape and arr.dtype == np.uint8:
                log.info("image cache hit: %s", target)
                return arr
        except (OSError, ValueError):
            pass
        log.warning("image cache entry %s is damaged; decoding again", target)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.stem}.", suffix=".npy")
        os.close(fd)
    except OSError as exc:
        log.warning("image cache %s is not writable (%s); decoding into memory", folder, exc)
        return decode_images(paths, size, progress=progress)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _decode_into(out, paths, size, progress)
        out.flush()
        del out
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("image cache written: %s (%d images at %d px)", target, len(paths), size)
    return np.load(target, mmap_mode="r")
