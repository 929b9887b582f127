"""A synthetic whole slide: nucleated cells on a marrow-like background, written as a pyramidal TIFF.

``OUT`` receives::

    slide.tiff              tiled pyramidal TIFF (generic tiled TIFF: level 0 then 2x reductions as
                            successive directories; JPEG or deflate tiles; resolution tags give the
                            pixel size, so tiffslide / OpenSlide report mpp)
    detections.csv          id,x,y,class  (cell centres in level-0 pixels)
    detections.geojson      QuPath-style FeatureCollection: one detection per cell, its outline as a
                            Polygon (or a Point), classification name and colour, true maturity
    slide.json              size, mpp, levels, the patch size that matches ``smr synth`` patches, counts
    thumbnail.png           the slide at about 1024 px

Cells are drawn by the same renderer as ``smr synth`` patches at the slide's pixel size, so a crop
of ``FIELD_UM / mpp`` pixels around a detection, resized to the training size, looks like a
training patch. The slide is rendered tile by tile (each tile with a margin, so blur has no seams)
and the reduced levels are built on the way, kept in a memory-mapped scratch file when large:
memory stays bounded whatever the slide size.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smr.core.lineages import PAPER_SPEC

from .morphology import CellParams, cell_params
from .output import check_target, staged_folder
from .population import STREAM_SLIDE, STREAM_STAIN, CellDraw, cell_rng, plan_population
from .render import (
    FIELD_UM,
    RED_CELL_RADIUS_UM,
    Canvas,
    Sprite,
    cell_extent_um,
    od_to_rgb,
    render_cell,
    render_platelet,
    render_red_cell,
    scatter_red_cells,
)
from .stain import Stain, sample_stain

__all__ = ["CLASS_COLOURS", "SlideSettings", "SlideSummary", "write_slide", "default_slide_size"]

CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "blast": (214, 39, 40),
    "promyelocyte": (255, 127, 14),
    "myelocyte": (188, 189, 34),
    "metamyelocyte": (44, 160, 44),
    "band": (23, 190, 207),
    "segmented": (31, 119, 180),
    "proerythroblast": (148, 103, 189),
    "basophilic_erythroblast": (197, 176, 213),
    "polychromatic_erythroblast": (227, 119, 194),
    "orthochromatic_erythroblast": (140, 86, 75),
    "basophil": (50, 50, 50),
    "eosinophil": (255, 152, 150),
    "lymphocyte": (127, 127, 127),
    "promonocyte": (219, 219, 141),
    "monocyte": (158, 218, 229),
}

_BLOCK_UM = 128.0  # red cells and platelets are laid out per block, each block with its own generator
_EDGE_UM = 4.0  # cells keep this far from the slide's edge
_MAX_SLIDE_PX = 200_000


@dataclass(frozen=True)
class SlideSettings:
    cells: int
    seed: int = 0
    width: int | None = None  # level-0 pixels; None: from the cell count and cell_area_um2
    height: int | None = None
    mpp: float = 0.25
    tile: int = 512
    compression: str = "jpeg"  # "jpeg" or "deflate"
    quality: int = 90
    label_noise: float = 0.1
    cell_area_um2: float = 1000.0  # slide area per nucleated cell when the size is not given
    geometry: str = "polygon"  # GeoJSON geometry: "polygon" or "point"

    def size(self) -> tuple[int, int]:
        if self.width is not None and self.height is not None:
            return self.width, self.height
        return default_slide_size(self.cells, self.mpp, self.cell_area_um2)

    def validate(self) -> None:
        if self.cells < 1:
            raise ValueError(f"--cells must be at least 1, got {self.cells}")
        if not 0.05 <= self.mpp <= 2.0:
            raise ValueError(f"--mpp must lie in [0.05, 2.0] micrometres per pixel, got {self.mpp}")
        if self.tile % 16 or not 64 <= self.tile <= 4096:
            raise ValueError(f"--tile must be a multiple of 16 in [64, 4096], got {self.tile}")
        if self.compression not in ("jpeg", "deflate"):
            raise ValueError(f"--compression must be one of jpeg, deflate; got {self.compression!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must lie in [1, 100], got {self.quality}")
        if not 0 <= self.label_noise <= 1:
            raise ValueError(f"--label-noise must lie in [0, 1], got {self.label_noise}")
        if self.geometry not in ("polygon", "point"):
            raise ValueError(f"--geometry must be one of polygon, point; got {self.geometry!r}")
        w, h = self.size()
        min_px = math.ceil(2 * (20.0 + _EDGE_UM) / self.mpp)
        if min(w, h) < min_px or max(w, h) > _MAX_SLIDE_PX:
            raise ValueError(
                f"--size must be between {min_px} and {_MAX_SLIDE_PX} pixels per side at {self.mpp} um/px, "
                f"got {w} x {h}"
            )


def default_slide_size(cells: int, mpp: float, cell_area_um2: float = 1000.0) -> tuple[int, int]:
    """A square slide with about ``cell_area_um2`` of smear per nucleated cell."""
    side_um = math.sqrt(cells * cell_area_um2) + 2 * 20.0
    side = int(math.ceil(side_um / mpp / 16.0) * 16)
    return side, side


@dataclass
class SlideSummary:
    out: Path
    width: int
    height: int
    levels: list[tuple[int, int]]
    counts: dict[str, int]
    seconds: float


@dataclass
class _PlacedCell:
    draw: CellDraw
    params: CellParams
    x: float  # centre, level-0 pixels
    y: float
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (pixels, exclusive end), window of its sprite


class _Scene:
    """Where everything on the slide is, and how to draw any tile of it."""

    def __init__(self, settings: SlideSettings) -> None:
        self.s = settings
        self.width, self.height = settings.size()
        self.mpp = settings.mpp
        self.stain: Stain = sample_stain(cell_rng(settings.seed, STREAM_STAIN, 0))
        layout = cell_rng(settings.seed, STREAM_SLIDE, 0)
        self.fat = self._fat_droplets(layout)
        self.density_waves = [
            (
                layout.uniform(0, 2 * math.pi),
                2 * math.pi / layout.uniform(150, 600),
                layout.uniform(0, 2 * math.pi),
            )
            for _ in range(3)
        ]
        draws = plan_population(
            settings.cells,
            settings.seed,
            min_per_class=1 if settings.cells >= len(PAPER_SPEC.classes) else 0,
            label_noise=settings.label_noise,
        )
        self.cells = self._place(draws, layout)
        self._sprites: dict[int, Sprite] = {}
        self._blocks: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.outlines: dict[int, np.ndarray] = {}

    # -- layout --------------------------------------------------------------------------------
    def _fat_droplets(self, rng: np.random.Generator) -> np.ndarray:
        w_um, h_um = self.width * self.mpp, self.height * self.mpp
        n = int(rng.poisson(w_um * h_um / 300.0**2))
        xy = rng.random((n, 2)) * [w_um, h_um]
        r = rng.uniform(8.0, 25.0, n)
        return np.column_stack([xy, r]) if n else np.zeros((0, 3))

    def _in_fat(self, x_um: np.ndarray, y_um: np.ndarray, pad: float) -> np.ndarray:
        inside = np.zeros(np.shape(x_um), bool)
        for fx, fy, fr in self.fat:
            inside |= (x_um - fx) ** 2 + (y_um - fy) ** 2 < (fr + pad) ** 2
        return inside

    def _place(self, draws: list[CellDraw], rng: np.random.Generator) -> list[_PlacedCell]:
        w_um, h_um = self.width * self.mpp, self.height * self.mpp
        grid: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
        cell_um = 24.0
        placed = []
        for d in draws:
            params = cell_params(
                d.cls, d.lineage, d.maturity, cell_rng(self.s.seed, STREAM_SLIDE, 1, d.index)
            )
            r = params.diameter / 2
            lo = r * math.sqrt(params.aspect) + _EDGE_UM
            for _ in range(400):
                x, y = rng.uniform(lo, w_um - lo), rng.uniform(lo, h_um - lo)
                if self._in_fat(np.array(x), np.array(y), r).item():
                    continue
                gx, gy = int(x // cell_um), int(y // cell_um)
                clash = False
                for nx in range(gx - 1, gx + 2):
                    for ny in range(gy - 1, gy + 2):
                        for ox, oy, orad in grid.get((nx, ny), ()):
                            if (ox - x) ** 2 + (oy - y) ** 2 < (0.85 * (orad + r) + 0.5) ** 2:
                                clash = True
                if not clash:
                    break
            else:
                raise ValueError(
                    f"cannot place {len(draws)} cells without overlap on a {self.width} x {self.height} px "
                    f"slide at {self.mpp} um/px; give a larger --size or fewer --cells"
                )
            grid.setdefault((int(x // cell_um), int(y // cell_um)), []).append((x, y, r))
            cx, cy = x / self.mpp, y / self.mpp
            half = cell_extent_um(params) / self.mpp
            bbox = (math.floor(cx - half), math.floor(cy - half), math.ceil(cx + half), math.ceil(cy + half))
            placed.append(_PlacedCell(d, params, cx, cy, bbox))
        return placed

    def _density(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Thick and thin areas of the smear: red-cell keep probability in [0.25, 1]."""
        g = np.zeros(np.shape(x_um))
        for angle, k, phase in self.density_waves:
            g += np.cos(k * (math.cos(angle) * x_um + math.sin(angle) * y_um) + phase)
        return np.clip(0.65 + 0.2 * g, 0.25, 1.0)

    def _block(self, bx: int, by: int) -> tuple[np.ndarray, np.ndarray]:
        """Red-cell and platelet centres (um) of one block."""
        cached = self._blocks.get((bx, by))
        if cached is not None:
            return cached
        rng = cell_rng(self.s.seed, STREAM_SLIDE, 2, by + 1, bx + 1)  # blocks start at -1
        red = scatter_red_cells(rng, _BLOCK_UM, _BLOCK_UM, self.stain.red_cell_density * 1.5, margin_um=0.0)
        red = red + [bx * _BLOCK_UM, by * _BLOCK_UM]
        keep = rng.random(len(red)) < self._density(red[:, 0], red[:, 1])
        red = red[keep & ~self._in_fat(red[:, 0], red[:, 1], 0.0)]
        n_plt = int(rng.poisson(_BLOCK_UM**2 / 100.0 * 0.06))
        plt = rng.random((n_plt, 2)) * _BLOCK_UM + [bx * _BLOCK_UM, by * _BLOCK_UM]
        self._blocks[(bx, by)] = red, plt
        return red, plt

    # -- drawing -------------------------------------------------------------------------------
    def _sprite(self, i: int) -> Sprite:
        sprite = self._sprites.get(i)
        if sprite is None:
            c = self.cells[i]
            rng = cell_rng(self.s.seed, STREAM_SLIDE, 3, c.draw.index)
            sprite = render_cell(c.params, self.stain, rng, self.mpp, c.x, c.y)
            self._sprites[i] = sprite
            self.outlines[i] = sprite.outline
        return sprite

    def forget_above(self, y: int) -> None:
        """Drop cached sprites and blocks that end above row ``y`` (they are not needed again)."""
        for i in [i for i, s in self._sprites.items() if s.bottom <= y]:
            del self._sprites[i]
        last_row = (y * self.mpp - RED_CELL_RADIUS_UM * 3) // _BLOCK_UM
        for key in [k for k in self._blocks if k[1] < last_row]:
            del self._blocks[key]

    def render_tile(self, x0: int, y0: int, size: int, cells: list[int], margin: int) -> np.ndarray:
        canvas = Canvas(size + 2 * margin, size + 2 * margin, y0 - margin, x0 - margin)
        for i in cells:
            canvas.add_cell(self._sprite(i))
        # red cells and platelets whose window can reach this tile
        reach = RED_CELL_RADIUS_UM * 1.5 + 1.0
        lo_x, lo_y = (x0 - margin) * self.mpp - reach, (y0 - margin) * self.mpp - reach
        hi_x, hi_y = (x0 + size + margin) * self.mpp + reach, (y0 + size + margin) * self.mpp + reach
        for by in range(max(-1, int(lo_y // _BLOCK_UM)), int(hi_y // _BLOCK_UM) + 1):
            for bx in range(max(-1, int(lo_x // _BLOCK_UM)), int(hi_x // _BLOCK_UM) + 1):
                red, plt = self._block(bx, by)
                for k, (x, y) in enumerate(red):
                    if lo_x <= x <= hi_x and lo_y <= y <= hi_y:
                        rng = cell_rng(self.s.seed, STREAM_SLIDE, 4, by + 1, bx + 1, k)
                        canvas.add_red(render_red_cell(self.stain, rng, self.mpp, x / self.mpp, y / self.mpp))
                for k, (x, y) in enumerate(plt):
                    if lo_x <= x <= hi_x and lo_y <= y <= hi_y:
                        rng = cell_rng(self.s.seed, STREAM_SLIDE, 5, by + 1, bx + 1, k)
                        canvas.add_red(render_platelet(self.stain, rng, self.mpp, x / self.mpp, y / self.mpp))
        rng = cell_rng(self.s.seed, STREAM_SLIDE, 6, y0, x0)
        rgb = od_to_rgb(canvas.od(self.stain), self.stain, rng, self.mpp)
        return rgb[margin : margin + size, margin : margin + size]


# -- pyramid -----------------------------------------------------------------------------------


def _downsample2(a: np.ndarray) -> np.ndarray:
    """2x2 mean (odd sizes: the last row/column is repeated)."""
    h, w = a.shape[:2]
    if h % 2 or w % 2:
        a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    total = a[0::2, 0::2].astype(np.uint16)
    total += a[1::2, 0::2]
    total += a[0::2, 1::2]
    total += a[1::2, 1::2]
    total += 2
    total //= 4
    return total.astype(np.uint8)


def _scratch(shape: tuple[int, int, int], folder: Path, name: str) -> np.ndarray:
    """An array for a reduced level: in memory when small, memory-mapped in ``folder`` when large."""
    if shape[0] * shape[1] * 3 <= 64 * 2**20:
        return np.zeros(shape, np.uint8)
    return np.lib.format.open_memmap(folder / name, mode="w+", dtype=np.uint8, shape=shape)


def _tiles_of(img: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    h, w = img.shape[:2]
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            block = np.asarray(img[y : y + tile, x : x + tile])
            if block.shape[:2] != (tile, tile):
                block = np.pad(
                    block, ((0, tile - block.shape[0]), (0, tile - block.shape[1]), (0, 0)), mode="edge"
                )
            yield block


def _level_shapes(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    shapes = [(width, height)]
    while max(shapes[-1]) > tile:
        w, h = shapes[-1]
        shapes.append(((w + 1) // 2, (h + 1) // 2))
    return shapes


# -- writing -----------------------------------------------------------------------------------


def _reduce(src: np.ndarray, folder: Path, name: str) -> np.ndarray:
    """The next pyramid level of ``src``, computed in strips of rows to bound memory."""
    h, w = src.shape[:2]
    dst = _scratch(((h + 1) // 2, (w + 1) // 2, 3), folder, name)
    rows = 512
    for y in range(0, h, rows):
        dst[y // 2 : (y + rows + 1) // 2] = _downsample2(np.asarray(src[y : y + rows]))
    return dst


def write_slide(
    out: str | os.PathLike, settings: SlideSettings, *, overwrite: bool = False, progress: bool = False
) -> SlideSummary:
    """Render the slide described by ``settings`` into the folder ``out`` (see the module docstring)."""
    settings.validate()
    out = Path(out)
    check_target(out, overwrite)
    start = time.perf_counter()
    scene = _Scene(settings)
    shapes = _level_shapes(scene.width, scene.height, settings.tile)
    with staged_folder(out) as tmp:
        _write_pyramid(tmp, scene, shapes, progress)
        _write_thumbnail(tmp)
        found = Counter(c.draw.cls for c in scene.cells)
        counts = {c: found.get(c, 0) for c in PAPER_SPEC.classes}
        (tmp / "detections.csv").write_text(_detections_csv(scene), encoding="utf-8")
        geojson = _detections_geojson(scene, settings.geometry)
        (tmp / "detections.geojson").write_text(json.dumps(geojson) + "\n", encoding="utf-8")
        meta = _slide_meta(scene, shapes, counts)
        (tmp / "slide.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return SlideSummary(out, scene.width, scene.height, shapes, counts, time.perf_counter() - start)


def _write_pyramid(folder: Path, scene: _Scene, shapes: list[tuple[int, int]], progress: bool) -> None:
    """``folder/slide.tiff``: level 0 rendered tile by tile (level 1 filled on the way), then the
    reduced levels; their scratch files are removed afterwards."""
    import tifffile
    from tqdm import tqdm

    settings, width, height, tile = scene.s, scene.width, scene.height, scene.s.tile
    margin = int(math.ceil(3 * scene.stain.blur_um / scene.mpp)) + 2
    tile_cells = _cells_by_tile(scene, tile, margin)
    common = _tiff_options(settings)
    # Level 1 is filled while level 0 is rendered; the smaller levels follow from it.
    level1 = _scratch((shapes[1][1], shapes[1][0], 3), folder, "level1.npy") if len(shapes) > 1 else None
    n_tiles = math.ceil(height / tile) * math.ceil(width / tile)
    bar = tqdm(total=n_tiles, unit="tile", desc="smr synth-slide", disable=not progress)
    with bar, tifffile.TiffWriter(folder / "slide.tiff", bigtiff=width * height * 3 > 2**31) as tif:
        tif.write(
            _level0_tiles(scene, tile_cells, margin, level1, bar),
            shape=(height, width, 3),
            subfiletype=0,
            resolution=(1e4 / scene.mpp, 1e4 / scene.mpp),
            description=f"SMR synthetic marrow slide; seed {settings.seed}; {settings.cells} cells",
            **common,
        )
        _write_reduced_levels(tif, level1, shapes, scene, folder, common)
    level1 = None  # release the scratch files' mappings
    for scratch in folder.glob("level*.npy"):
        scratch.unlink()


def _cells_by_tile(scene: _Scene, tile: int, margin: int) -> dict[tuple[int, int], list[int]]:
    """(tile row, tile column) -> the cells whose window, grown by ``margin``, reaches that tile."""
    n_ty, n_tx = math.ceil(scene.height / tile), math.ceil(scene.width / tile)
    tile_cells: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(scene.cells):
        x0, y0, x1, y1 = c.bbox
        for ty in range(max(0, (y0 - margin) // tile), min(n_ty, (y1 + margin) // tile + 1)):
            for tx in range(max(0, (x0 - margin) // tile), min(n_tx, (x1 + margin) // tile + 1)):
                tile_cells.setdefault((ty, tx), []).append(i)
    return tile_cells


def _tiff_options(settings: SlideSettings) -> dict[str, Any]:
    """The ``TiffWriter.write`` options every level shares: tiles, colour, codec, resolution unit."""
    compression = {"jpeg": ("jpeg", {"level": settings.quality}), "deflate": ("zlib", {"level": 6})}
    codec, codec_args = compression[settings.compression]
    return {
        "tile": (settings.tile, settings.tile),
        "dtype": np.uint8,
        "photometric": "rgb",
        "compression": codec,
        "compressionargs": codec_args,
        "resolutionunit": "CENTIMETER",
        "metadata": None,
        "software": "smr synth-slide",
    }


def _level0_tiles(
    scene: _Scene,
    tile_cells: dict[tuple[int, int], list[int]],
    margin: int,
    level1: np.ndarray | None,
    bar: Any,
) -> Iterator[np.ndarray]:
    """Level 0's tiles in TIFF order, rendered on demand; each is also reduced into ``level1``."""
    tile = scene.s.tile
    n_ty, n_tx = math.ceil(scene.height / tile), math.ceil(scene.width / tile)
    for ty in range(n_ty):
        for tx in range(n_tx):
            rgb = scene.render_tile(tx * tile, ty * tile, tile, tile_cells.get((ty, tx), []), margin)
            if level1 is not None:
                y, x = ty * tile // 2, tx * tile // 2
                hh, ww = min(tile // 2, level1.shape[0] - y), min(tile // 2, level1.shape[1] - x)
                level1[y : y + hh, x : x + ww] = _downsample2(rgb)[:hh, :ww]
            bar.update(1)
            yield rgb
        scene.forget_above((ty + 1) * tile - margin)


def _write_reduced_levels(
    tif: Any,
    level1: np.ndarray | None,
    shapes: list[tuple[int, int]],
    scene: _Scene,
    folder: Path,
    common: dict[str, Any],
) -> None:
    """Levels 1, 2, ... into ``tif``, each reduced from the one before (scratch files in ``folder``)."""
    width, tile = shapes[0][0], scene.s.tile
    level = level1
    for k, (lw, lh) in enumerate(shapes[1:], start=1):
        assert level is not None and level.shape[:2] == (lh, lw)
        mpp = scene.mpp * width / lw
        tif.write(
            _tiles_of(level, tile),
            shape=(lh, lw, 3),
            subfiletype=1,
            resolution=(1e4 / mpp, 1e4 / mpp),
            **common,
        )
        if k + 1 < len(shapes):
            level = _reduce(level, folder, f"level{k + 1}.npy")


def _write_thumbnail(folder: Path) -> None:
    """``folder/thumbnail.png``: the smallest level of ``slide.tiff`` of at least 1024 px, at 1024 px."""
    import tifffile
    from PIL import Image

    with tifffile.TiffFile(folder / "slide.tiff") as tf:
        levels = tf.series[0].levels
        source = next((lv for lv in reversed(levels) if max(lv.shape[:2]) >= 1024), levels[0])
        thumb = Image.fromarray(source.asarray())
    thumb.thumbnail((1024, 1024))
    thumb.save(folder / "thumbnail.png", compress_level=4)


def _slide_meta(scene: _Scene, shapes: list[tuple[int, int]], counts: dict[str, int]) -> dict[str, Any]:
    """``slide.json``: settings, size, pixel size, levels and the patch size matching ``smr synth``."""
    return {
        "generator": "smr.synth",
        "settings": asdict(scene.s),
        "width": scene.width,
        "height": scene.height,
        "mpp": scene.mpp,
        "levels": [list(s) for s in shapes],
        "tile": scene.s.tile,
        "field_um": FIELD_UM,
        "patch_px": FIELD_UM / scene.mpp,
        "counts": counts,
    }


def _detections_csv(scene: _Scene) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "x", "y", "class"])
    for c in scene.cells:
        w.writerow([c.draw.index, f"{c.x:.2f}", f"{c.y:.2f}", c.draw.cls])
    return buf.getvalue()


def _detections_geojson(scene: _Scene, geometry: str) -> dict:
    features = []
    for i, c in enumerate(scene.cells):
        if geometry == "polygon":
            ring = scene.outlines[i] / scene.mpp + [c.x, c.y]
            ring = np.clip(ring, 0, [scene.width, scene.height])
            coords = [[round(float(x), 2), round(float(y), 2)] for x, y in ring]
            geom = {"type": "Polygon", "coordinates": [coords + [coords[0]]]}
        else:
            geom = {"type": "Point", "coordinates": [round(c.x, 2), round(c.y, 2)]}
        props: dict = {
            "objectType": "detection",
            "classification": {"name": c.draw.cls, "color": list(CLASS_COLOURS[c.draw.cls])},
        }
        if c.draw.lineage is not None:
            props["lineage"] = c.draw.lineage
            props["maturity"] = round(c.draw.maturity, 6)
        feature = {"type": "Feature", "id": f"cell-{c.draw.index}", "geometry": geom, "properties": props}
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}
