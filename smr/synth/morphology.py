"""What a cell looks like, as numbers: size, nucleus shape, chromatin, cytoplasm and granules.

Lineage cells take their parameters from their *latent maturity* ``m`` in [0, 1], never from their
label: each parameter is interpolated linearly between anchor values placed at the centres of the
lineage's stages, so size, nucleus-to-cytoplasm ratio, nuclear shape, chromatin texture and colour
change continuously along maturation and cells near a stage boundary really are in between. The
five classes without a maturity order have one parameter set each. Every cell then gets its own
random variation.

Sizes are in micrometres; ``*_frac`` values are fractions of the cell radius.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

__all__ = ["CellParams", "LINEAGE_ANCHORS", "OTHER_PARAMS", "cell_params", "mean_params"]


@dataclass(frozen=True)
class CellParams:
    """Everything the renderer needs to draw one nucleated cell."""

    diameter: float  # cell diameter, micrometres
    aspect: float = 1.0  # body elongation (1 round)
    wobble: float = 0.03  # outline irregularity (relative radius change)
    nuc_width_frac: float = 0.7  # radius of the nuclear "tube" (round nucleus: its radius)
    nuc_length_frac: float = 0.05  # length of the nucleus' centre line
    nuc_bend: float = 0.0  # total turn of the centre line, radians (0 straight/round, ~pi a C shape)
    nuc_lobes: int = 1  # lobes the constriction produces
    nuc_constriction: float = 0.0  # 0 even width ... 1 lobes joined by hairline strands
    nuc_irregularity: float = 0.02  # contour noise of the nucleus
    nuc_offset: float = 0.1  # eccentricity: 0 central ... 1 touching the cell edge
    chromatin_density: float = 1.0  # nuclear stain intensity
    chromatin_coarseness: float = 0.5  # 0 fine, open ... 1 coarse clumps
    chromatin_contrast: float = 0.3  # clump vs. parachromatin contrast
    nucleoli: float = 0.0  # 0 none ... 1 clearly visible (count grows with it)
    cyto_blue: float = 0.3  # basophilia (RNA)
    cyto_neutro: float = 0.0  # pale salmon ground of maturing granulocytes
    cyto_pink: float = 0.0  # hemoglobin
    azurophil: float = 0.0  # primary granules per square micrometre
    specific: float = 0.0  # secondary (neutrophil) granules per square micrometre
    eosinophil_granules: float = 0.0  # per square micrometre
    basophil_granules: float = 0.0  # per square micrometre, also over the nucleus
    vacuoles: float = 0.0  # expected number of vacuoles
    hof: float = 0.0  # pale Golgi zone beside the nucleus
    halo: float = 0.0  # pale perinuclear ring (erythroblasts)


_CONTINUOUS = tuple(f.name for f in fields(CellParams) if f.name != "nuc_lobes")

# Anchor values at the stage centres, immature -> mature.
LINEAGE_ANCHORS: dict[str, dict[str, tuple[float, ...]]] = {
    # blast, promyelocyte, myelocyte, metamyelocyte, band, segmented
    "granulopoiesis": {
        "diameter": (13.5, 17.5, 14.5, 13.0, 12.0, 11.5),
        "wobble": (0.03, 0.04, 0.03, 0.03, 0.03, 0.03),
        "nuc_width_frac": (0.76, 0.58, 0.50, 0.40, 0.23, 0.30),
        "nuc_length_frac": (0.08, 0.15, 0.30, 0.80, 1.75, 1.95),
        "nuc_bend": (0.0, 0.2, 0.6, 2.2, 3.6, 3.8),
        "nuc_constriction": (0.0, 0.0, 0.0, 0.0, 0.12, 0.85),
        "nuc_irregularity": (0.02, 0.03, 0.03, 0.04, 0.03, 0.04),
        "nuc_offset": (0.1, 0.75, 0.6, 0.35, 0.15, 0.1),
        "chromatin_density": (0.75, 0.82, 0.95, 1.05, 1.12, 1.18),
        "chromatin_coarseness": (0.05, 0.3, 0.55, 0.7, 0.8, 0.9),
        "chromatin_contrast": (0.12, 0.22, 0.32, 0.38, 0.42, 0.42),
        "nucleoli": (1.0, 0.35, 0.0, 0.0, 0.0, 0.0),
        "cyto_blue": (0.95, 0.55, 0.22, 0.10, 0.06, 0.04),
        "cyto_neutro": (0.0, 0.4, 1.0, 1.15, 1.2, 1.25),
        "azurophil": (0.05, 1.8, 0.15, 0.06, 0.04, 0.03),
        "specific": (0.0, 0.4, 2.5, 3.0, 3.0, 3.0),
        "hof": (0.0, 0.7, 0.4, 0.1, 0.0, 0.0),
    },
    # proerythroblast, basophilic, polychromatic, orthochromatic erythroblast
    "erythropoiesis": {
        "diameter": (16.5, 13.5, 11.0, 9.5),
        "wobble": (0.06, 0.03, 0.02, 0.02),
        "nuc_width_frac": (0.74, 0.70, 0.62, 0.58),
        "nuc_length_frac": (0.06, 0.05, 0.04, 0.03),
        "nuc_offset": (0.1, 0.15, 0.3, 0.45),
        "nuc_irregularity": (0.02, 0.015, 0.01, 0.01),
        "chromatin_density": (0.82, 1.0, 1.15, 1.5),
        "chromatin_coarseness": (0.25, 0.55, 0.8, 0.4),
        "chromatin_contrast": (0.15, 0.35, 0.45, 0.15),
        "nucleoli": (0.9, 0.15, 0.0, 0.0),
        "cyto_blue": (1.35, 1.1, 0.45, 0.12),
        "cyto_pink": (0.0, 0.15, 0.65, 1.0),
        "halo": (0.55, 0.4, 0.15, 0.0),
    },
}

OTHER_PARAMS: dict[str, CellParams] = {
    "basophil": CellParams(
        diameter=11.5,
        nuc_width_frac=0.36,
        nuc_length_frac=0.8,
        nuc_bend=1.8,
        nuc_lobes=2,
        nuc_constriction=0.5,
        nuc_offset=0.15,
        chromatin_density=0.95,
        chromatin_coarseness=0.6,
        chromatin_contrast=0.3,
        cyto_blue=0.25,
        cyto_neutro=0.6,
        basophil_granules=1.8,
    ),
    "eosinophil": CellParams(
        diameter=13.5,
        nuc_width_frac=0.30,
        nuc_length_frac=1.3,
        nuc_bend=2.4,
        nuc_lobes=2,
        nuc_constriction=0.85,
        nuc_offset=0.15,
        chromatin_density=1.0,
        chromatin_coarseness=0.75,
        chromatin_contrast=0.35,
        cyto_blue=0.12,
        cyto_neutro=0.4,
        eosinophil_granules=3.6,
    ),
    "lymphocyte": CellParams(
        diameter=8.8,
        nuc_width_frac=0.84,
        nuc_length_frac=0.08,
        nuc_bend=0.4,
        nuc_offset=0.25,
        chromatin_density=1.1,
        chromatin_coarseness=0.6,
        chromatin_contrast=0.3,
        nucleoli=0.05,
        cyto_blue=0.5,
        azurophil=0.02,
    ),
    "promonocyte": CellParams(
        diameter=16.0,
        wobble=0.05,
        nuc_width_frac=0.55,
        nuc_length_frac=0.5,
        nuc_bend=1.2,
        nuc_irregularity=0.08,
        nuc_offset=0.25,
        chromatin_density=0.72,
        chromatin_coarseness=0.25,
        chromatin_contrast=0.2,
        nucleoli=0.5,
        cyto_blue=0.6,
        cyto_neutro=0.3,
        azurophil=0.15,
        vacuoles=0.8,
    ),
    "monocyte": CellParams(
        diameter=16.0,
        aspect=1.1,
        wobble=0.08,
        nuc_width_frac=0.5,
        nuc_length_frac=0.85,
        nuc_bend=1.7,
        nuc_irregularity=0.06,
        nuc_offset=0.2,
        chromatin_density=0.8,
        chromatin_coarseness=0.4,
        chromatin_contrast=0.3,
        cyto_blue=0.4,
        cyto_neutro=0.45,
        azurophil=0.12,
        vacuoles=3.0,
    ),
}

# Relative (log-normal) spread of each parameter from cell to cell; the rest use _DEFAULT_SPREAD.
_SPREAD = {"diameter": 0.08, "nuc_bend": 0.15, "nuc_offset": 0.3, "vacuoles": 0.5, "nucleoli": 0.2}
_DEFAULT_SPREAD = 0.07
_LOBE_CHOICES = (2, 3, 4, 5)
_LOBE_WEIGHTS = (0.2, 0.4, 0.3, 0.1)


def mean_params(cls: str, lineage: str | None, maturity: float) -> CellParams:
    """The average cell of a lineage at ``maturity``, or of an other class (``lineage=None``)."""
    if lineage is None:
        try:
            return OTHER_PARAMS[cls]
        except KeyError:
            raise ValueError(f"no morphology for class {cls!r}; known: {', '.join(OTHER_PARAMS)}") from None
    try:
        table = LINEAGE_ANCHORS[lineage]
    except KeyError:
        raise ValueError(
            f"no morphology for lineage {lineage!r}; known: {', '.join(LINEAGE_ANCHORS)}"
        ) from None
    if not 0.0 <= maturity <= 1.0:
        raise ValueError(f"maturity must lie in [0, 1], got {maturity}")
    n = len(next(iter(table.values())))
    centres = (np.arange(n) + 0.5) / n
    values = {k: float(np.interp(maturity, centres, v)) for k, v in table.items()}
    return replace(CellParams(diameter=values.pop("diameter")), **values)


def cell_params(cls: str, lineage: str | None, maturity: float, rng: np.random.Generator) -> CellParams:
    """One cell's parameters: :func:`mean_params` with per-cell random variation."""
    base = mean_params(cls, lineage, maturity)
    changes: dict[str, float | int] = {}
    for name in _CONTINUOUS:
        value = getattr(base, name)
        if value == 0.0:
            continue
        spread = _SPREAD.get(name, _DEFAULT_SPREAD)
        changes[name] = value * math.exp(rng.normal(0.0, spread))
    if base.nuc_lobes == 1 and lineage == "granulopoiesis":
        changes["nuc_lobes"] = int(rng.choice(_LOBE_CHOICES, p=_LOBE_WEIGHTS))
    elif cls == "basophil":
        changes["nuc_lobes"] = int(rng.integers(2, 4))
    for name in ("nuc_constriction", "nuc_offset"):
        if name in changes:
            changes[name] = min(float(changes[name]), 0.95)
    return replace(base, **changes)
