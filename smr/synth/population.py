"""Which cells a synthetic data set holds: classes, counts and true maturities.

Every lineage cell has one continuous latent maturity ``m`` in [0, 1] along its lineage
(0 the most immature stage's start, 1 the most mature stage's end). The lineage's C stages split
[0, 1] into C equal intervals; the *true stage* is the interval ``m`` falls in. The *label* is the
true stage, except near a boundary, where annotators disagree: a cell at distance ``d`` from the
boundary to a neighbouring stage carries that neighbour's label with probability
``0.5 * exp(-d / tau)``, ``tau = label_noise * stage width`` (a coin toss on the boundary itself).

Counts are planned per *label*, so every class is present at the requested size, and the maturity of
each cell is then drawn from ``p(m | label)`` -- the latent density ``p(m)`` (piecewise constant,
stage masses proportional to :data:`MARROW_PROPORTIONS`) times the label-noise model above.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from smr.core.lineages import PAPER_SPEC, LineageSpec

__all__ = [
    "MARROW_PROPORTIONS",
    "CellDraw",
    "allocate_counts",
    "cell_rng",
    "label_probabilities",
    "plan_population",
    "random_cell",
    "sample_maturity",
    "stage_edges",
]

MARROW_PROPORTIONS: dict[str, float] = {
    # Roughly a normal adult marrow differential (percent of nucleated cells).
    "blast": 1.5,
    "promyelocyte": 3.0,
    "myelocyte": 10.0,
    "metamyelocyte": 11.0,
    "band": 13.0,
    "segmented": 14.0,
    "proerythroblast": 0.8,
    "basophilic_erythroblast": 2.5,
    "polychromatic_erythroblast": 12.0,
    "orthochromatic_erythroblast": 6.0,
    "basophil": 0.4,
    "eosinophil": 3.0,
    "lymphocyte": 12.0,
    "promonocyte": 0.6,
    "monocyte": 2.5,
}

# Streams of randomness derived from the user's seed; separate streams keep e.g. the class plan
# independent of how many random numbers a cell's rendering consumes.
STREAM_PLAN = 0
STREAM_CELL = 1
STREAM_STAIN = 2
STREAM_SLIDE = 3


def cell_rng(seed: int, stream: int, *index: int) -> np.random.Generator:
    """A generator determined by ``(seed, stream, *index)`` alone (not by call order or workers)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, *index)))


@dataclass(frozen=True)
class CellDraw:
    """One planned cell: its label, lineage (``None`` for other classes) and true maturity (NaN if none)."""

    index: int
    cls: str
    lineage: str | None
    maturity: float


def stage_edges(n_stages: int) -> np.ndarray:
    """The ``n_stages + 1`` edges of equal stage intervals on [0, 1]."""
    return np.linspace(0.0, 1.0, n_stages + 1)


def label_probabilities(m: np.ndarray | float, n_stages: int, label_noise: float) -> np.ndarray:
    """``p(label = k | m)`` for every stage ``k``: array of shape ``(len(m), n_stages)``, rows sum to 1."""
    m = np.atleast_1d(np.asarray(m, dtype=np.float64))
    edges = stage_edges(n_stages)
    stage = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, n_stages - 1)
    p = np.zeros((m.size, n_stages))
    rows = np.arange(m.size)
    if label_noise <= 0:
        p[rows, stage] = 1.0
        return p
    tau = label_noise / n_stages
    has_lower = stage > 0
    has_upper = stage < n_stages - 1
    down = np.where(has_lower, 0.5 * np.exp(-(m - edges[stage]) / tau), 0.0)
    up = np.where(has_upper, 0.5 * np.exp(-(edges[stage + 1] - m) / tau), 0.0)
    # Narrow stages with a large noise could make the two flips exceed one; keep a valid distribution.
    total = down + up
    scale = np.where(total > 0.95, 0.95 / np.maximum(total, 1e-12), 1.0)
    down, up = down * scale, up * scale
    p[rows, stage] = 1.0 - down - up
    p[rows[has_lower], stage[has_lower] - 1] = down[has_lower]
    p[rows[has_upper], stage[has_upper] + 1] = up[has_upper]
    return p


def sample_maturity(
    label: int,
    stage_weights: Sequence[float],
    label_noise: float,
    rng: np.random.Generator,
) -> float:
    """Draw ``m ~ p(m | label)`` by rejection sampling (see the module docstring)."""
    n = len(stage_weights)
    w = np.asarray(stage_weights, dtype=np.float64)
    density = w / w.sum() * n  # piecewise-constant p(m): stage mass / stage width
    edges = stage_edges(n)
    margin = 8.0 * label_noise / n
    lo, hi = max(0.0, edges[label] - margin), min(1.0, edges[label + 1] + margin)
    neighbours = density[max(0, label - 1) : label + 2]
    bound = float(neighbours.max())
    while True:
        m = rng.uniform(lo, hi, size=32)
        stage = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, n - 1)
        target = density[stage] * label_probabilities(m, n, label_noise)[:, label]
        accepted = m[rng.uniform(0.0, bound, size=m.size) < target]
        if accepted.size:
            return float(accepted[0])


def allocate_counts(n: int, proportions: Sequence[float], minimum: int) -> np.ndarray:
    """Split ``n`` into per-class counts: ``minimum`` each, the rest by ``proportions``.

    The rest is shared by the largest-remainder method, so the counts add up to ``n`` exactly.
    """
    p = np.asarray(proportions, dtype=np.float64)
    k = p.size
    if n < k * minimum:
        raise ValueError(f"{n} cells cannot hold {minimum} of each of {k} classes")
    rest = n - k * minimum
    share = rest * p / p.sum()
    counts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: rest - int(counts.sum())]] += 1
    return counts + minimum


def plan_population(
    n_cells: int,
    seed: int,
    *,
    spec: LineageSpec = PAPER_SPEC,
    proportions: Mapping[str, float] = MARROW_PROPORTIONS,
    min_per_class: int = 20,
    label_noise: float = 0.1,
) -> list[CellDraw]:
    """Plan ``n_cells`` cells: labels shuffled by ``seed``, maturities from each cell's own generator.

    Each class gets at least ``min(min_per_class, n_cells // n_classes)`` cells, so with
    ``min_per_class >= 1`` ``n_cells`` must be at least the number of classes; ``min_per_class=0``
    shares the cells by the proportions alone (e.g. for a slide with few cells).
    """
    classes = spec.classes
    if min_per_class > 0 and n_cells < len(classes):
        raise ValueError(f"need at least {len(classes)} cells (one per class), got {n_cells}")
    if n_cells < 1:
        raise ValueError(f"need at least one cell, got {n_cells}")
    if label_noise < 0 or not math.isfinite(label_noise):
        raise ValueError(f"label noise must be a finite number >= 0, got {label_noise}")
    missing = [c for c in classes if c not in proportions]
    if missing:
        raise ValueError(f"no proportion for class(es) {', '.join(missing)}")
    minimum = min(min_per_class, n_cells // len(classes)) if min_per_class > 0 else 0
    counts = allocate_counts(n_cells, [proportions[c] for c in classes], minimum)
    labels = np.repeat(np.arange(len(classes)), counts)
    cell_rng(seed, STREAM_PLAN).shuffle(labels)

    draws = []
    for i, k in enumerate(labels):
        name = classes[int(k)]
        where = spec.stage_of(name)
        if where is None:
            draws.append(CellDraw(i, name, None, math.nan))
            continue
        lineage = spec.lineages[where[0]]
        weights = [proportions[c] for c in lineage.classes]
        m = sample_maturity(where[1], weights, label_noise, cell_rng(seed, STREAM_PLAN, i))
        draws.append(CellDraw(i, name, lineage.name, m))
    return draws


def random_cell(
    rng: np.random.Generator,
    spec: LineageSpec = PAPER_SPEC,
    proportions: Mapping[str, float] = MARROW_PROPORTIONS,
) -> tuple[str, str | None, float]:
    """A cell drawn from the marrow's proportions: ``(class, lineage or None, maturity or NaN)``.

    Used for incidental cells (neighbours at a patch border); its maturity lies inside its stage.
    """
    classes = spec.classes
    p = np.asarray([proportions[c] for c in classes], dtype=np.float64)
    name = classes[int(rng.choice(len(classes), p=p / p.sum()))]
    where = spec.stage_of(name)
    if where is None:
        return name, None, math.nan
    lineage = spec.lineages[where[0]]
    n = len(lineage.classes)
    return name, lineage.name, float((where[1] + rng.random()) / n)
