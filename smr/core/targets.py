"""Regression targets of a lineage's maturity stages on its curve, and stages read back from t.

Each of the C classes of a lineage (ordered immature -> mature) gets a target position
t_c in [0, 1] on the lineage's curve, with t_0 = 0 and t_{C-1} = 1. The stage boundaries are the
midpoints between consecutive targets; a position t on the curve is read back as the stage whose
interval contains it. See ``docs/method.md`` for the formulas and why Eq. 2 uses class counts.

numpy and the standard library only (copied next to the Triton python model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = [
    "TARGET_KINDS",
    "uniform_targets",
    "frequency_targets",
    "make_targets",
    "stage_boundaries",
    "stage_from_position",
]

TARGET_KINDS = ("uniform", "frequency")


def uniform_targets(n: int) -> np.ndarray:
    """Eq. 1: ``t_c = c / (C - 1)`` for ``C = n`` classes, shape ``(n,)``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"number of classes must be an integer, got {type(n).__name__} {n!r}")
    if n < 2:
        raise ValueError(f"a lineage needs at least 2 classes for targets, got {n}")
    return np.arange(n, dtype=np.float64) / (n - 1)


def _as_counts(counts: ArrayLike) -> np.ndarray:
    arr = np.asarray(counts)
    if arr.ndim != 1:
        raise ValueError(f"class counts must be a 1-D sequence, got shape {arr.shape}")
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"class counts must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if len(arr) < 2:
        raise ValueError(f"a lineage needs at least 2 classes for targets, got {len(arr)} count(s)")
    for c, n in enumerate(arr):
        if not np.isfinite(n):
            raise ValueError(f"count of class {c} is not finite ({n})")
        if n < 1:
            raise ValueError(f"count of class {c} is {n:g}; every class of a lineage needs at least 1 sample")
    return arr


def frequency_targets(counts: ArrayLike) -> np.ndarray:
    """Eq. 2 on class counts: gaps ``g_c = (log(N_{c-1}+1) + log(N_c+1)) / 2``, cumulated, normalised.

    ``counts`` are the numbers of samples per class in stage order, each >= 1. ``log1p`` keeps every
    gap positive (>= log 2) even for classes of one sample, so targets are strictly increasing.
    Rarer classes get smaller intervals; the paper's relative frequencies would do the opposite.
    """
    logs = np.log1p(_as_counts(counts))
    gaps = 0.5 * (logs[:-1] + logs[1:])
    cum = np.concatenate(([0.0], np.cumsum(gaps)))
    targets = cum / cum[-1]
    targets[-1] = 1.0  # exact, whatever the rounding of the cumulative sum
    return targets


def make_targets(kind: str, counts: ArrayLike) -> np.ndarray:
    """Targets of the named ``kind`` ("uniform" or "frequency") for classes with these ``counts``."""
    if kind == "uniform":
        return uniform_targets(len(_as_counts(counts)))
    if kind == "frequency":
        return frequency_targets(counts)
    raise ValueError(f"unknown target kind {kind!r}; valid kinds: {', '.join(TARGET_KINDS)}")


def _as_targets(targets: ArrayLike) -> np.ndarray:
    arr = np.asarray(targets, dtype=np.float64)
    if arr.ndim != 1 or len(arr) < 2:
        raise ValueError(f"targets must be a 1-D array of at least 2 positions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("targets contain NaN or infinity")
    if np.any(np.diff(arr) <= 0):
        raise ValueError(f"targets must be strictly increasing, got {arr.tolist()}")
    return arr


def stage_boundaries(targets: ArrayLike) -> np.ndarray:
    """Midpoints between consecutive targets, shape ``(C - 1,)``: the borders between stages."""
    arr = _as_targets(targets)
    return 0.5 * (arr[:-1] + arr[1:])


def stage_from_position(t: ArrayLike, boundaries: ArrayLike) -> np.ndarray:
    """Stage index (0 .. C-1) of each position ``t``, given the ``C - 1`` stage ``boundaries``.

    A position exactly on a boundary belongs to the more mature stage. Positions outside [0, 1]
    fall into the first or last stage.
    """
    b = np.asarray(boundaries, dtype=np.float64)
    if b.ndim != 1:
        raise ValueError(f"boundaries must be a 1-D array, got shape {b.shape}")
    if not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
        raise ValueError(f"boundaries must be finite and strictly increasing, got {b.tolist()}")
    pos = np.asarray(t, dtype=np.float64)
    if np.isnan(pos).any():
        raise ValueError("positions contain NaN")
    return np.searchsorted(b, pos, side="right").astype(np.int64)
