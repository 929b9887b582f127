"""May-Grünwald-Giemsa colours as optical densities, and their variation from slide to slide.

Rendering works in optical density (Beer-Lambert): each structure adds ``density * colour_od`` and
the pixel is ``illumination * exp(-total_od)``, so overlapping structures darken naturally. Colours
were read off CellaVision MGG images (peripheral blood, 360 px patches): background, red cells and
nuclei match their mean colours; the others follow the usual MGG hues.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["Stain", "rgb_to_od", "reference_stain", "sample_stain"]


def rgb_to_od(
    rgb: tuple[float, float, float], over: tuple[float, float, float] = (255, 255, 255)
) -> np.ndarray:
    """Optical density of colour ``rgb`` seen on top of ``over`` (both 0-255)."""
    return np.log(np.asarray(over, dtype=np.float64) / np.asarray(rgb, dtype=np.float64)).astype(np.float32)


_BG = (254.0, 228.0, 202.0)


@dataclass(frozen=True)
class Stain:
    """OD colour (per unit density, RGB) of every stained structure, plus imaging parameters."""

    background: np.ndarray  # plasma / glass, present everywhere
    red_cell: np.ndarray  # the rim of a red cell
    nucleus: np.ndarray  # chromatin (azure-eosin complex)
    basophilic: np.ndarray  # RNA-rich blue cytoplasm
    hemoglobin: np.ndarray  # orthochromatic (red-cell-like) cytoplasm
    neutrophilic: np.ndarray  # pale salmon-lilac ground of maturing granulocytes
    azurophil: np.ndarray  # primary granules: dark red-purple
    specific: np.ndarray  # secondary (neutrophil) granules: fine lilac dust
    eosinophil: np.ndarray  # orange-red refractile granules
    basophil: np.ndarray  # dark purple-black granules
    nucleolus: np.ndarray  # pale blue-grey nucleoli
    illumination: np.ndarray  # white level per channel
    blur_um: float  # focus blur, standard deviation in micrometres
    noise: float  # sensor noise, grey levels (standard deviation)
    red_cell_density: float  # red cells per 100 square micrometres


def reference_stain() -> Stain:
    """The stain of a typical CellaVision MGG slide."""
    return Stain(
        background=rgb_to_od(_BG),
        red_cell=rgb_to_od((205, 155, 155), _BG),
        nucleus=rgb_to_od((90, 40, 140), _BG),
        basophilic=rgb_to_od((120, 124, 184), _BG),
        hemoglobin=rgb_to_od((205, 165, 170), _BG),
        neutrophilic=rgb_to_od((228, 192, 200), _BG),
        azurophil=rgb_to_od((95, 20, 105), _BG),
        specific=rgb_to_od((200, 150, 185), _BG),
        eosinophil=rgb_to_od((238, 160, 135), _BG),
        basophil=rgb_to_od((90, 30, 130), _BG),
        nucleolus=rgb_to_od((150, 160, 200), _BG),
        illumination=np.array([255.0, 255.0, 255.0], dtype=np.float32),
        blur_um=0.15,
        noise=1.6,
        red_cell_density=1.2,
    )


_COLOUR_FIELDS = (
    "red_cell",
    "nucleus",
    "basophilic",
    "hemoglobin",
    "neutrophilic",
    "azurophil",
    "specific",
    "eosinophil",
    "basophil",
    "nucleolus",
)


def sample_stain(rng: np.random.Generator, strength: float = 1.0) -> Stain:
    """A slide's stain: the reference with random intensity, hue, background and imaging changes.

    ``strength`` scales every variation (0 gives the reference stain).
    """
    ref = reference_stain()
    s = float(strength)
    changes: dict[str, object] = {}
    # Staining time / pH: all dyes darker or lighter together, plus a per-dye drift.
    overall = np.exp(rng.normal(0.0, 0.10 * s))
    for name in _COLOUR_FIELDS:
        od = getattr(ref, name)
        hue = np.exp(rng.normal(0.0, 0.06 * s, size=3))
        changes[name] = (od * overall * np.exp(rng.normal(0.0, 0.06 * s)) * hue).astype(np.float32)
    # Background: mostly warm peach; some slides are cooler (thin areas, other buffers).
    cool = rng.random() < 0.06 * s
    bg_rgb = np.array(_BG) if not cool else np.array([240.0, 232.0, 240.0])
    bg_rgb = np.clip(bg_rgb + rng.normal(0.0, 3.0 * s, size=3), 150, 255)
    changes["background"] = rgb_to_od(tuple(bg_rgb))
    changes["illumination"] = np.clip(
        ref.illumination * np.exp(rng.normal(0.0, 0.015 * s, 3)), 200, 255
    ).astype(np.float32)
    changes["blur_um"] = float(ref.blur_um * np.exp(rng.normal(0.0, 0.25 * s)))
    changes["noise"] = float(ref.noise * np.exp(rng.normal(0.0, 0.3 * s)))
    changes["red_cell_density"] = float(ref.red_cell_density * np.exp(rng.normal(0.0, 0.25 * s)))
    return replace(ref, **changes)
