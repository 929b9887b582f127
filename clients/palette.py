"""One colour per class, shared by the report's plots and the QuPath GeoJSON.

Each lineage gets a sequential colour ramp (light = immature, dark = mature), so maturation reads
at a glance; the other classes get distinct qualitative colours.
"""

from __future__ import annotations

from .model_info import ModelInfo

__all__ = ["class_colors", "hex_color"]

_RAMPS = ("Oranges", "Reds", "Blues", "Greens", "Purples", "Greys")
_OTHER = "tab10"


def class_colors(info: ModelInfo) -> dict[str, tuple[int, int, int]]:
    """RGB (0..255) per class in the server's class order."""
    from matplotlib import colormaps

    colors: dict[str, tuple[int, int, int]] = {}
    for k, lin in enumerate(info.lineages):
        ramp = colormaps[_RAMPS[k % len(_RAMPS)]]
        n = len(lin.classes)
        for i, c in enumerate(lin.classes):
            rgba = ramp(0.35 + 0.6 * i / max(n - 1, 1))
            colors[c] = tuple(int(round(255 * v)) for v in rgba[:3])
    qualitative = colormaps[_OTHER]
    others = [c for c in info.classes if c not in colors]
    for i, c in enumerate(others):
        rgba = qualitative((i + 4) % 10)  # skip tab10's orange/red/blue/green, taken by the ramps
        colors[c] = tuple(int(round(255 * v)) for v in rgba[:3])
    return colors


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
