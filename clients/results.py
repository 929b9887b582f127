"""Typed results of classifying cells: the SVM's class and, per lineage, where the cell sits on the curve.

Every cell gets the SVM's class and probabilities and, for every lineage, its position t on the
lineage's curve (0 immature .. 1 mature), the distance to the curve and the stage that the position
falls into (the *stage estimate*, read from the stage boundaries). A cell of a lineage class is
*borderline* when its position lies within ``margin`` of a stage boundary (it sits between two
stages) or when the curve's stage disagrees with the SVM's class. Cells of the classes without a
maturity order (lymphocytes, monocytes, ...) are never borderline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from smr.core.targets import stage_from_position

from .model_info import ModelInfo

__all__ = ["DEFAULT_MARGIN", "BatchOutputs", "LineagePosition", "CellResult", "cells_from_outputs"]

#: Default half-width (in t) of the band around a stage boundary in which a cell counts as borderline.
DEFAULT_MARGIN = 0.03


@dataclass
class BatchOutputs:
    """The ensemble's outputs for one batch of N images, as numpy arrays."""

    probabilities: np.ndarray  # (N, C) float32
    class_id: np.ndarray  # (N,) int
    maturity: np.ndarray  # (N, L) float32
    distance: np.ndarray  # (N, L) float32
    embedding: np.ndarray | None = None  # (N, D) float32 when asked for

    def __len__(self) -> int:
        return len(self.class_id)

    @staticmethod
    def concatenate(parts: list[BatchOutputs]) -> BatchOutputs:
        emb = [p.embedding for p in parts]
        return BatchOutputs(
            probabilities=np.concatenate([p.probabilities for p in parts]),
            class_id=np.concatenate([p.class_id for p in parts]),
            maturity=np.concatenate([p.maturity for p in parts]),
            distance=np.concatenate([p.distance for p in parts]),
            embedding=None if any(e is None for e in emb) else np.concatenate(emb),
        )


@dataclass(frozen=True)
class LineagePosition:
    """A cell's place on one lineage's curve."""

    lineage: str
    position: float  # t in [0, 1]: 0 most immature, 1 most mature
    distance: float  # Euclidean distance of the embedding to the curve
    stage: str  # the stage (class name) whose interval on the curve contains ``position``
    near_boundary: bool  # ``position`` lies within the margin of a stage boundary


@dataclass(frozen=True)
class CellResult:
    """One classified cell."""

    class_name: str
    class_id: int
    probability: float  # the SVM's probability of ``class_name``
    probabilities: dict[str, float]  # every class, in the server's class order
    lineages: tuple[LineagePosition, ...]  # one per served lineage, in the server's order
    lineage: str | None  # the lineage ``class_name`` is a stage of; None for the other classes
    borderline: bool
    borderline_reason: str  # "" when not borderline
    embedding: np.ndarray | None = None

    def _own(self) -> LineagePosition | None:
        if self.lineage is None:
            return None
        return next(p for p in self.lineages if p.lineage == self.lineage)

    @property
    def position(self) -> float | None:
        """Position on the own lineage's curve; None for classes without a maturity order."""
        own = self._own()
        return None if own is None else own.position

    @property
    def distance(self) -> float | None:
        own = self._own()
        return None if own is None else own.distance

    @property
    def stage_estimate(self) -> str | None:
        """The stage read from the own lineage's curve (may differ from ``class_name``)."""
        own = self._own()
        return None if own is None else own.stage

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        d: dict[str, Any] = {
            "class": self.class_name,
            "class_id": self.class_id,
            "probability": self.probability,
            "lineage": self.lineage,
            "position": self.position,
            "distance": self.distance,
            "stage_estimate": self.stage_estimate,
            "borderline": self.borderline,
            "borderline_reason": self.borderline_reason,
            "probabilities": dict(self.probabilities),
            "lineages": {
                p.lineage: {"position": p.position, "distance": p.distance, "stage": p.stage}
                for p in self.lineages
            },
        }
        if self.embedding is not None:
            d["embedding"] = [float(v) for v in self.embedding]
        return d


def cells_from_outputs(
    info: ModelInfo, outputs: BatchOutputs, *, margin: float = DEFAULT_MARGIN
) -> list[CellResult]:
    """Turn a batch's raw outputs into :class:`CellResult` objects (stage estimates, borderline flags)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    n = len(outputs)
    probs = np.asarray(outputs.probabilities, dtype=np.float32).reshape(n, len(info.classes))
    class_id = np.asarray(outputs.class_id).reshape(n).astype(np.int64)
    n_lin = len(info.lineages)
    maturity = np.asarray(outputs.maturity, dtype=np.float32).reshape(n, n_lin)
    distance = np.asarray(outputs.distance, dtype=np.float32).reshape(n, n_lin)
    if n and (class_id.min() < 0 or class_id.max() >= len(info.classes)):
        raise ValueError(f"class ids outside 0..{len(info.classes) - 1}: {sorted(set(class_id.tolist()))}")

    # Per lineage, vectorised: stage index from the position, and nearness to any boundary.
    stage_idx = np.empty((n, n_lin), dtype=np.int64)
    near = np.zeros((n, n_lin), dtype=bool)
    for j, lin in enumerate(info.lineages):
        t = maturity[:, j].astype(np.float64)
        stage_idx[:, j] = stage_from_position(t, lin.boundaries)
        gaps = np.abs(t[:, None] - np.asarray(lin.boundaries)[None, :])
        near[:, j] = gaps.min(axis=1) < margin
    class_lineage = [info.lineage_of(c) for c in info.classes]

    cells = []
    for i in range(n):
        cid = int(class_id[i])
        name = info.classes[cid]
        positions = tuple(
            LineagePosition(
                lineage=lin.name,
                position=float(maturity[i, j]),
                distance=float(distance[i, j]),
                stage=lin.classes[stage_idx[i, j]],
                near_boundary=bool(near[i, j]),
            )
            for j, lin in enumerate(info.lineages)
        )
        own = class_lineage[cid]
        reason = ""
        if own is not None:
            pos = positions[own]
            reasons = []
            if pos.near_boundary:
                b = np.asarray(info.lineages[own].boundaries)
                k = int(np.argmin(np.abs(b - pos.position)))
                stages = info.lineages[own].classes
                reasons.append(f"between {stages[k]} and {stages[k + 1]}")
            if pos.stage != name:
                reasons.append(f"curve says {pos.stage}")
            reason = "; ".join(reasons)
        cells.append(
            CellResult(
                class_name=name,
                class_id=cid,
                probability=float(probs[i, cid]),
                probabilities={c: float(p) for c, p in zip(info.classes, probs[i], strict=True)},
                lineages=positions,
                lineage=None if own is None else info.lineages[own].name,
                borderline=bool(reason),
                borderline_reason=reason,
                embedding=None if outputs.embedding is None else np.asarray(outputs.embedding[i]),
            )
        )
    return cells
