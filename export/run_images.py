"""Images of a run's training or validation split, for parity checks, calibration and evaluation.

``split.json`` lists the images relative to the data set's root (its ``"data"`` entry, or the
``--data`` given to ``smr export``); the first path component is the class folder. Images are
read and resized as training read them (``smr.data.folder.load_image`` at the run's image size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SplitImages", "ImagesUnavailable", "load_split_images"]


class ImagesUnavailable(RuntimeError):
    """The run's images cannot be found (no split.json, or its data folder is gone)."""


@dataclass(frozen=True)
class SplitImages:
    images: np.ndarray  # uint8 (N, S, S, 3)
    labels: np.ndarray  # int64 (N,), indices into the run's classes
    paths: list[Path]


def _evenly(items: Sequence, limit: int | None) -> list:
    """At most ``limit`` items spread over the whole list (so that every class is represented)."""
    if limit is None or len(items) <= limit:
        return list(items)
    idx = np.linspace(0, len(items) - 1, num=limit).round().astype(int)
    return [items[i] for i in np.unique(idx)]


def load_split_images(
    run_dir: str | Path,
    split: str,
    *,
    classes: Sequence[str],
    image_size: int,
    limit: int | None = None,
    data_root: str | Path | None = None,
) -> SplitImages:
    """Read up to ``limit`` images of ``split`` ("train" or "val"), evenly spread over the list."""
    from smr.data.folder import ImageError, load_image
    from smr.train.rundir import RunDirError, read_split

    try:
        doc = read_split(run_dir)
    except RunDirError as exc:
        raise ImagesUnavailable(str(exc)) from None
    root = Path(data_root) if data_root is not None else (Path(doc["data"]) if doc.get("data") else None)
    if root is None or not root.is_dir():
        where = "no data folder recorded" if root is None else f"data folder {root} not found"
        raise ImagesUnavailable(
            f"{Path(run_dir) / 'split.json'}: {where}; pass --data DIR (the data set's root)"
        )
    index = {name: i for i, name in enumerate(classes)}
    chosen = _evenly(doc[split], limit)
    images, labels, paths = [], [], []
    for rel in chosen:
        class_name = Path(rel).parts[0]
        if class_name not in index:
            raise ImagesUnavailable(f"split.json: {rel!r} is not inside a class folder of {list(classes)}")
        path = root / rel
        try:
            images.append(load_image(path, size=image_size))
        except ImageError as exc:
            raise ImagesUnavailable(f"cannot read a {split} image: {exc}") from None
        labels.append(index[class_name])
        paths.append(path)
    array = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    return SplitImages(array, np.asarray(labels, dtype=np.int64), paths)
