"""Folder data sets, image loading, stratified splits and ``smr data check``.

Names are imported on first use, so that ``smr --help`` does not load numpy and Pillow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IMAGE_EXTENSIONS": "folder",
    "DatasetError": "folder",
    "FolderDataset": "folder",
    "ImageError": "folder",
    "ImageInfo": "folder",
    "Sample": "folder",
    "find_images": "folder",
    "inspect_image": "folder",
    "load_image": "folder",
    "SplitError": "splits",
    "stratified_kfold": "splits",
    "train_val_split": "splits",
    "CheckReport": "check",
    "check_dataset": "check",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
