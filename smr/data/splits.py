"""Stratified splits of a labelled data set, deterministic for a seed (numpy only).

Within each class the samples are shuffled with the seed and dealt round-robin to the folds; the
starting fold moves on from class to class, so fold sizes differ by at most one overall and each
class's count in a fold is the floor or ceiling of ``n_c / k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["SplitError", "stratified_kfold", "train_val_split"]


class SplitError(ValueError):
    """A split cannot be made (too few samples in a class, bad parameters)."""


def _as_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise SplitError(f"labels must be one-dimensional, got shape {y.shape}")
    if y.size == 0:
        raise SplitError("no samples to split")
    if not np.issubdtype(y.dtype, np.integer):
        raise SplitError(f"labels must be integers, got {y.dtype}")
    return y


def _class_label(c: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= c < len(class_names):
        return f"class {class_names[c]!r} (label {c})"
    return f"class label {c}"


def stratified_kfold(
    labels: Sequence[int] | np.ndarray,
    k: int,
    seed: int = 0,
    *,
    class_names: Sequence[str] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` folds as ``(train_idx, val_idx)`` pairs (sorted int64 index arrays).

    Every sample is in exactly one validation fold; every class present has at least ``k``
    samples (else :class:`SplitError` naming the classes, with ``class_names`` when given).
    """
    y = _as_labels(labels)
    if not isinstance(k, int | np.integer) or k < 2:
        raise SplitError(f"k must be an integer >= 2, got {k!r}")
    classes, counts = np.unique(y, return_counts=True)
    small = [(int(c), int(n)) for c, n in zip(classes, counts, strict=True) if n < k]
    if small:
        names = ", ".join(f"{_class_label(c, class_names)} has {n}" for c, n in small)
        raise SplitError(f"{k}-fold stratified splitting needs at least {k} samples per class: {names}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(y.size, dtype=np.int64)
    start = 0
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        fold_of[idx] = (start + np.arange(idx.size)) % k
        start = (start + idx.size) % k
    all_idx = np.arange(y.size, dtype=np.int64)
    return [(all_idx[fold_of != f], all_idx[fold_of == f]) for f in range(k)]


def train_val_split(
    labels: Sequence[int] | np.ndarray,
    val_fraction: float,
    seed: int = 0,
    *,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A stratified ``(train_idx, val_idx)`` split with about ``val_fraction`` of each class in val.

    Each class gets ``round(n_c * val_fraction)`` validation samples, clipped so that both sides
    keep at least one; a class with fewer than two samples is a :class:`SplitError`.
    """
    y = _as_labels(labels)
    if not 0.0 < float(val_fraction) < 1.0:
        raise SplitError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    classes, counts = np.unique(y, return_counts=True)
    small = [(int(c), int(n)) for c, n in zip(classes, counts, strict=True) if n < 2]
    if small:
        names = ", ".join(f"{_class_label(c, class_names)} has {n}" for c, n in small)
        raise SplitError(f"a train/validation split needs at least 2 samples per class: {names}")
    rng = np.random.default_rng(seed)
    is_val = np.zeros(y.size, dtype=bool)
    for c, n in zip(classes, counts, strict=True):
        n_val = int(np.clip(np.floor(n * float(val_fraction) + 0.5), 1, n - 1))
        idx = rng.permutation(np.flatnonzero(y == c))
        is_val[idx[:n_val]] = True
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)
