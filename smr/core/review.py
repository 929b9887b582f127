"""The review rule: each cell's stage on every lineage's curve, and whether to flag it for review.

One definition for both sides: the served ``smr_postprocess`` returns its result as the ensemble
outputs ``STAGE`` and ``BORDERLINE`` (``smr.core.contract``), and the clients apply the same
function to the served outputs when a repository exported before those outputs existed answers, or
when they were asked for another margin.

- **Stage.** The position t of a cell on a lineage's curve falls into one stage of that lineage:
  the stage boundaries (midpoints between consecutive targets) cut [0, 1] into intervals
  (:func:`smr.core.targets.stage_from_position`).
- **Flagged for review** (*borderline*) when the cell is likely misclassified, for one or both
  reasons (bits of the flags, 0 when not flagged):

  - :data:`SVM_UNSURE`: the SVM's two most probable classes differ by less than ``margin`` in
    probability;
  - :data:`CURVE_DISAGREES`: the curve's stage lies :data:`STAGE_GAP` (3) or more stages away from
    the SVM's class in that class's lineage (a neighbouring stage is normal near a boundary, and
    flagging two stages apart cost more review than it found errors).

The margin is the model's own: :func:`choose_margin` picks it on the run's validation split when
``smr train`` saves the best epoch (the smallest margin whose flags hold half of the misclassified
validation images, but flagging no more than a fifth of them), ``smr export`` serves it, and the
clients apply it unless told another. :data:`STAGE_GAP` was chosen on the validation splits of
synthetic training runs, not on the slides they were tested on (docs/clients.md, "Cells flagged
for review"). The rule reads the outputs as served (float32), so a client deriving it from them
gets exactly what the server returned.

numpy and the standard library only (copied next to the Triton python model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .contract import DEFAULT_REVIEW_MARGIN
from .targets import stage_from_position

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = [
    "DEFAULT_REVIEW_MARGIN",
    "STAGE_GAP",
    "SVM_UNSURE",
    "CURVE_DISAGREES",
    "Review",
    "check_margin",
    "REVIEW_ERRORS_FOUND",
    "REVIEW_MAX_FLAGGED",
    "choose_margin",
    "class_stages",
    "stages",
    "runner_up",
    "review_flags",
    "review",
]

#: A cell whose curve stage lies this many stages (or more) from its SVM class is flagged.
STAGE_GAP = 3
#: Flag bit: the SVM's two most probable classes differ by less than the margin.
SVM_UNSURE = 1
#: Flag bit: the curve's stage lies STAGE_GAP or more stages from the SVM's class.
CURVE_DISAGREES = 2
#: :func:`choose_margin`: the share of the misclassified validation images the flags should hold ...
REVIEW_ERRORS_FOUND = 0.5
#: ... and the largest share of the validation images they may flag (a reviewer's workload).
REVIEW_MAX_FLAGGED = 0.2


class Review(NamedTuple):
    """The rule's result for N cells and L lineages."""

    stage: np.ndarray  # (N, L) int32: index of the stage within each lineage's classes
    flags: np.ndarray  # (N,) uint8: SVM_UNSURE | CURVE_DISAGREES; 0 when not flagged
    runner_up: np.ndarray  # (N,) int64: the most probable class other than the SVM's own
    gap: np.ndarray  # (N,) float64: probability of the class minus that of the runner-up


def check_margin(margin: float) -> float:
    """``margin`` as a float; ``ValueError`` unless it lies in [0, 1] (a difference of probabilities)."""
    value = float(margin)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"margin must lie in [0, 1] (a difference of probabilities), got {margin}")
    return value


def choose_margin(
    probabilities: ArrayLike,
    labels: ArrayLike,
    *,
    errors_found: float = REVIEW_ERRORS_FOUND,
    max_flagged: float = REVIEW_MAX_FLAGGED,
) -> float:
    """The SVM margin of a model's review flags, chosen on labelled (validation) images.

    ``probabilities`` (N, C) of the SVM and the true ``labels`` (N,). Flagging the cells whose two
    most probable classes differ by less than the margin, the result is the smallest margin whose
    flags hold ``errors_found`` of the misclassified images, unless that flags more than
    ``max_flagged`` of all images: then the margin that flags at most that share. 0.0 when nothing
    is misclassified or nothing may be flagged.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probabilities (N, C) and labels (N,) disagree: {p.shape} and {y.shape}")
    if not (0.0 <= errors_found <= 1.0 and 0.0 <= max_flagged <= 1.0):
        raise ValueError(f"errors_found {errors_found} and max_flagged {max_flagged} must lie in [0, 1]")
    class_id = p.argmax(axis=1)
    _, gap = runner_up(p, class_id)
    wrong = class_id != y
    order = np.argsort(gap, kind="stable")
    gap, wrong = gap[order], wrong[order]
    if not wrong.any():
        return 0.0
    need = math.ceil(errors_found * int(wrong.sum()) - 1e-9)  # errors the flags should hold
    found = np.cumsum(wrong)  # found[i]: errors among the i + 1 least sure cells
    k = min(int(np.searchsorted(found, need)) + 1, int(max_flagged * len(gap) + 1e-9))  # cells to flag
    if need == 0 or k <= 0:
        return 0.0
    if k >= len(gap):
        return 1.0  # every cell (that is not certain)
    # flags are gap < margin: halfway to the next cell's gap, rounded to 4 decimals where that
    # keeps the same cells flagged (ties with the next cell leave them all unflagged)
    middle = float(gap[k - 1] + gap[k]) / 2
    rounded = round(middle, 4)
    return rounded if gap[k - 1] < rounded <= gap[k] else middle


def class_stages(classes: Sequence[str], lineages: Sequence[Sequence[str]]) -> np.ndarray:
    """(C, 2) int64: per class, the index of its lineage and of its stage there; (-1, -1) for the
    classes without a maturity order. ``lineages``: each lineage's classes, immature -> mature."""
    out = np.full((len(classes), 2), -1, dtype=np.int64)
    names = list(classes)
    for j, stage_names in enumerate(lineages):
        for k, name in enumerate(stage_names):
            if name not in names:
                raise ValueError(f"lineage {j} stage {name!r} is not one of the classes {names}")
            out[names.index(name)] = (j, k)
    return out


def stages(maturity: ArrayLike, boundaries: Sequence[ArrayLike]) -> np.ndarray:
    """(N, L) int32: the stage of each position in ``maturity`` (N, L) by its lineage's boundaries."""
    t = np.asarray(maturity)
    if t.ndim != 2 or t.shape[1] != len(boundaries):
        raise ValueError(f"maturity must have shape (N, {len(boundaries)}), got {t.shape}")
    out = np.empty(t.shape, dtype=np.int32)
    for j, b in enumerate(boundaries):
        out[:, j] = stage_from_position(t[:, j].astype(np.float64), b)
    return out


def runner_up(probabilities: np.ndarray, class_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runner-up class of each row (the most probable other than ``class_id``; the class itself
    when there is only one) and the probability gap to it, in float64 of the given values."""
    p = np.asarray(probabilities).astype(np.float64)
    n, n_classes = p.shape
    rows = np.arange(n)
    own = p[rows, class_id]
    if n_classes < 2:
        return class_id.astype(np.int64), own
    others = p.copy()
    others[rows, class_id] = -np.inf
    runner = others.argmax(axis=1).astype(np.int64)
    return runner, own - others[rows, runner]


def review_flags(
    gap: np.ndarray, class_id: np.ndarray, stage: np.ndarray, class_stage: np.ndarray, margin: float
) -> np.ndarray:
    """(N,) uint8 flags of :class:`Review` from the SVM's gap, class and the curve stages."""
    flags = np.where(gap < check_margin(margin), SVM_UNSURE, 0).astype(np.uint8)
    lineage, own_stage = class_stage[class_id, 0], class_stage[class_id, 1]
    staged = np.flatnonzero(lineage >= 0)
    curve_stage = stage[staged, lineage[staged]].astype(np.int64)
    far = np.abs(curve_stage - own_stage[staged]) >= STAGE_GAP
    flags[staged[far]] |= CURVE_DISAGREES
    return flags


def review(
    probabilities: ArrayLike,
    class_id: ArrayLike,
    maturity: ArrayLike,
    boundaries: Sequence[ArrayLike],
    class_stage: np.ndarray,
    margin: float = DEFAULT_REVIEW_MARGIN,
    *,
    stage: ArrayLike | None = None,
) -> Review:
    """The stages and review flags of N cells from the ensemble's outputs.

    ``probabilities`` (N, C), ``class_id`` (N,) or (N, 1), ``maturity`` (N, L) as served;
    ``boundaries``: each lineage's C_l - 1 stage boundaries; ``class_stage``: :func:`class_stages`.
    ``stage`` (N, L): stages already known (served), used instead of reading them from ``maturity``.
    """
    p = np.asarray(probabilities)
    if p.ndim != 2 or p.shape[1] != len(class_stage):
        raise ValueError(f"probabilities must have shape (N, {len(class_stage)}), got {p.shape}")
    cid = np.asarray(class_id).reshape(len(p)).astype(np.int64)
    if len(cid) and (cid.min() < 0 or cid.max() >= p.shape[1]):
        raise ValueError(f"class ids outside 0..{p.shape[1] - 1}: {sorted(set(cid.tolist()))}")
    if stage is None:
        stage_idx = stages(np.asarray(maturity).reshape(len(p), len(boundaries)), boundaries)
    else:
        stage_idx = np.asarray(stage).reshape(len(p), len(boundaries)).astype(np.int32)
    runner, gap = runner_up(p, cid)
    return Review(stage_idx, review_flags(gap, cid, stage_idx, class_stage, margin), runner, gap)
