"""Typed results of classifying cells: the SVM's class and, per lineage, where the cell sits on the curve.

Every cell gets the SVM's class and probabilities and, for every lineage, its position t on the
lineage's curve (0 immature .. 1 mature), the distance to the curve and the stage that the position
falls into (the *stage estimate*, read from the stage boundaries). The server clamps t to [0, 1]:
a cell at exactly 0 or 1 lies *before the curve's start* or *beyond its end* (:func:`curve_end`),
not at the most immature or most mature point.

A cell is *flagged for review* (``borderline``) when it is likely misclassified:

- the SVM is unsure: its two most probable classes differ by less than ``margin`` in
  probability, or
- the curve contradicts the SVM grossly: the curve's stage is ``STAGE_GAP`` (3) or more stages
  away from the SVM's class in the class's lineage (a neighbouring stage is normal near a
  boundary, and flagging two stages apart cost more review than it found errors).

The rule is :func:`smr.core.review.review`, which the server applies too: an ensemble that serves
``STAGE`` and ``BORDERLINE`` (:attr:`ModelInfo.serves_review`) sends the stages, and its flags are
used as they are when the client's margin is the served one; otherwise (another margin, or a
repository exported before those outputs) the same function derives them here from the other
outputs, with the same result. Without a margin of its own the client takes the server's
(:func:`review_margin`): the model's, chosen on its validation split when it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from smr.core.review import CURVE_DISAGREES, STAGE_GAP, SVM_UNSURE, Review, class_stages, review

from .defaults import DEFAULT_MARGIN
from .model_info import ModelInfo

__all__ = [
    "DEFAULT_MARGIN",
    "review_margin",
    "STAGE_GAP",
    "BEFORE_START",
    "BEYOND_END",
    "BatchOutputs",
    "LineagePosition",
    "CellResult",
    "cells_from_outputs",
    "curve_end",
]

#: The position marks of cells the server projected onto an end of the curve (t clamped to 0 or 1).
BEFORE_START = "before start"
BEYOND_END = "beyond end"
_END_TOLERANCE = 1e-6  # float32 positions: within this of 0 or 1 is on the end point


def curve_end(t: float | None) -> str:
    """``"before start"`` for t = 0, ``"beyond end"`` for t = 1 (clamped by the server), else ``""``.

    The server projects onto the curve restricted to t in [0, 1]; an embedding past an end lands on
    that end, at its distance from it. A position exactly on an end therefore means "past it".
    """
    if t is None:
        return ""
    if t <= _END_TOLERANCE:
        return BEFORE_START
    if t >= 1.0 - _END_TOLERANCE:
        return BEYOND_END
    return ""


@dataclass
class BatchOutputs:
    """The ensemble's outputs for one batch of N images, as numpy arrays."""

    probabilities: np.ndarray  # (N, C) float32
    class_id: np.ndarray  # (N,) int
    maturity: np.ndarray  # (N, L) float32
    distance: np.ndarray  # (N, L) float32
    embedding: np.ndarray | None = None  # (N, D) float32 when asked for
    stage: np.ndarray | None = None  # (N, L) int32 when served (STAGE)
    borderline: np.ndarray | None = None  # (N,) uint8 review flags when served (BORDERLINE)

    def __len__(self) -> int:
        return len(self.class_id)

    @staticmethod
    def concatenate(parts: list[BatchOutputs]) -> BatchOutputs:
        def optional(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            if not arrays or any(a is None for a in arrays):
                return None  # only where every part has it
            return np.concatenate(arrays)

        return BatchOutputs(
            probabilities=np.concatenate([p.probabilities for p in parts]),
            class_id=np.concatenate([p.class_id for p in parts]),
            maturity=np.concatenate([p.maturity for p in parts]),
            distance=np.concatenate([p.distance for p in parts]),
            embedding=optional("embedding"),
            stage=optional("stage"),
            borderline=optional("borderline"),
        )


@dataclass(frozen=True)
class LineagePosition:
    """A cell's place on one lineage's curve."""

    lineage: str
    position: float  # t in [0, 1]: 0 most immature, 1 most mature
    distance: float  # Euclidean distance of the embedding to the curve
    stage: str  # the stage (class name) whose interval on the curve contains ``position``

    @property
    def end(self) -> str:
        """:data:`BEFORE_START`, :data:`BEYOND_END` or ``""`` (see :func:`curve_end`)."""
        return curve_end(self.position)


@dataclass(frozen=True)
class CellResult:
    """One classified cell."""

    class_name: str
    class_id: int
    probability: float  # the SVM's probability of ``class_name``
    probabilities: dict[str, float]  # every class, in the server's class order
    lineages: tuple[LineagePosition, ...]  # one per served lineage, in the server's order
    lineage: str | None  # the lineage ``class_name`` is a stage of; None for the other classes
    borderline: bool  # flagged for review: likely misclassified (see the module's docstring)
    borderline_reason: str  # "" when not flagged
    embedding: np.ndarray | None = None
    runner_up: str = ""  # the SVM's second most probable class
    margin: float = 1.0  # probability of the class minus that of the runner-up

    @property
    def end(self) -> str:
        """Whether the cell lies before the start or beyond the end of its own lineage's curve."""
        own = self._own()
        return "" if own is None else own.end

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
            "curve_end": self.end,
            "runner_up": self.runner_up,
            "margin": self.margin,
            "borderline": self.borderline,
            "borderline_reason": self.borderline_reason,
            "probabilities": dict(self.probabilities),
            "lineages": {
                p.lineage: {"position": p.position, "distance": p.distance, "stage": p.stage, "end": p.end}
                for p in self.lineages
            },
        }
        if self.embedding is not None:
            d["embedding"] = [float(v) for v in self.embedding]
        return d


def _words(name: str) -> str:
    return name.replace("_", " ")


def review_margin(info: ModelInfo, margin: float | None = None) -> float:
    """The margin cells are flagged with: ``margin`` when given, else the server's (its flags then
    apply as served), else :data:`DEFAULT_MARGIN` (a repository that serves no flags)."""
    if margin is not None:
        return margin
    return DEFAULT_MARGIN if info.review_margin is None else info.review_margin


def _review(
    info: ModelInfo,
    outputs: BatchOutputs,
    probs: np.ndarray,
    class_id: np.ndarray,
    maturity: np.ndarray,
    margin: float,
) -> Review:
    """:func:`smr.core.review.review` of the batch, with the served stages and flags where they apply."""
    n = len(class_id)
    result = review(
        probs,
        class_id,
        maturity,
        [lin.boundaries for lin in info.lineages],
        class_stages(info.classes, [lin.classes for lin in info.lineages]),
        margin,
        stage=outputs.stage,
    )
    if outputs.borderline is not None and outputs.stage is not None and info.review_margin == margin:
        return result._replace(flags=np.asarray(outputs.borderline).reshape(n).astype(np.uint8))
    return result


def _reason(flags: int, name: str, own_p: float, runner: str, runner_p: float, curve: str) -> str:
    """The words of a cell's review flags ("" when not flagged)."""
    reasons = []
    if flags & SVM_UNSURE:
        reasons.append(f"SVM unsure: {_words(name)} {own_p:.2f} vs {_words(runner)} {runner_p:.2f}")
    if flags & CURVE_DISAGREES:
        reasons.append(f"curve says {_words(curve)}")
    return "; ".join(reasons)


def cells_from_outputs(
    info: ModelInfo, outputs: BatchOutputs, *, margin: float | None = None
) -> list[CellResult]:
    """Turn a batch's outputs into :class:`CellResult` objects (stage estimates, review flags).

    ``margin``: a cell whose two most probable classes differ by less than this is flagged (None:
    the server's, :func:`review_margin`). The
    served ``STAGE`` and ``BORDERLINE`` are used where ``outputs`` has them (the flags only when
    ``margin`` is the server's); otherwise :func:`smr.core.review.review` derives them.
    """
    n = len(outputs)
    n_classes = len(info.classes)
    probs = np.asarray(outputs.probabilities, dtype=np.float32).reshape(n, n_classes)
    class_id = np.asarray(outputs.class_id).reshape(n).astype(np.int64)
    n_lin = len(info.lineages)
    maturity = np.asarray(outputs.maturity, dtype=np.float32).reshape(n, n_lin)
    distance = np.asarray(outputs.distance, dtype=np.float32).reshape(n, n_lin)
    margin = review_margin(info, margin)
    result = _review(info, outputs, probs, class_id, maturity, margin)  # ValueError: bad margin, ids
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
                stage=lin.classes[result.stage[i, j]],
            )
            for j, lin in enumerate(info.lineages)
        )
        own_p, gap = float(probs[i, cid]), float(result.gap[i])
        rid = int(result.runner_up[i])
        runner_p = float(probs[i, rid]) if n_classes > 1 else 0.0
        own = class_lineage[cid]
        curve = "" if own is None else info.lineages[own].classes[result.stage[i, own]]
        reason = _reason(int(result.flags[i]), name, own_p, info.classes[rid], runner_p, curve)
        cells.append(
            CellResult(
                class_name=name,
                class_id=cid,
                probability=own_p,
                probabilities={c: float(p) for c, p in zip(info.classes, probs[i], strict=True)},
                lineages=positions,
                lineage=None if own is None else info.lineages[own].name,
                borderline=bool(reason),
                borderline_reason=reason,
                embedding=None if outputs.embedding is None else np.asarray(outputs.embedding[i]),
                runner_up=info.classes[rid],
                margin=gap,
            )
        )
    return cells
