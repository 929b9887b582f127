"""Pictures of the generator: a contact sheet (a row per class) and a comparison with real patches.

Regenerate the documentation images with::

    smr synth-slide /tmp/smr-slide --cells 500 --seed 0
    python -m smr.synth.contact_sheet docs/images/contact_sheet.png \\
        --compare PBC_DEV --compare-out docs/images/synthetic_vs_pbc.png \\
        --slide /tmp/smr-slide --slide-out docs/images/synthetic_slide.png

where PBC_DEV is a folder data set of real patches (the PBC development subset).
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np

from smr.core.lineages import PAPER_SPEC

from .population import STREAM_CELL, STREAM_STAIN, cell_rng, random_cell
from .render import render_patch
from .stain import sample_stain

__all__ = ["contact_sheet_grid", "save_contact_sheet", "save_comparison", "save_slide_figure", "PBC_TO_SYNTH"]

# PBC (peripheral blood) folder -> the synthetic class that shows the same cell type.
PBC_TO_SYNTH = {
    "promyelocyte": "promyelocyte",
    "myelocyte": "myelocyte",
    "metamyelocyte": "metamyelocyte",
    "band": "band",
    "segmented": "segmented",
    "erythroblast": "orthochromatic_erythroblast",
    "basophil": "basophil",
    "eosinophil": "eosinophil",
    "lymphocyte": "lymphocyte",
    "monocyte": "monocyte",
}


def _synthetic(cls: str, maturity: float, size: int, seed: int, k: int) -> np.ndarray:
    where = PAPER_SPEC.stage_of(cls)
    lineage = PAPER_SPEC.lineages[where[0]].name if where else None
    stain = sample_stain(cell_rng(seed, STREAM_STAIN, k % 12))
    rng = cell_rng(seed, STREAM_CELL, PAPER_SPEC.class_index(cls), k)
    return render_patch(cls, lineage, maturity, size, stain, rng, random_cell)


def _maturities(cls: str, n: int) -> list[float]:
    """``n`` maturities spread evenly over the class' stage, immature to mature (NaN for others)."""
    where = PAPER_SPEC.stage_of(cls)
    if where is None:
        return [math.nan] * n
    stages = len(PAPER_SPEC.lineages[where[0]].classes)
    return [(where[1] + (j + 0.5) / n) / stages for j in range(n)]


def contact_sheet_grid(per_row: int = 10, size: int = 96, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """A (15 * size, per_row * size, 3) image: a row per class in the spec's order, and the row names."""
    classes = list(PAPER_SPEC.classes)
    grid = np.zeros((len(classes) * size, per_row * size, 3), np.uint8)
    for r, cls in enumerate(classes):
        for j, m in enumerate(_maturities(cls, per_row)):
            grid[r * size : (r + 1) * size, j * size : (j + 1) * size] = _synthetic(cls, m, size, seed, j)
    return grid, classes


def _figure(width_px: int, height_px: int, dpi: int = 100):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)


def _save(plt, fig, path: str | Path) -> Path:
    """Save a figure as a 256-colour PNG (the pictures' sensor noise makes full-colour PNGs large)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    plt.close(fig)
    buf.seek(0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def save_contact_sheet(path: str | Path, per_row: int = 10, size: int = 96, seed: int = 0) -> Path:
    """Write the contact sheet as a PNG with the class names beside the rows."""
    grid, names = contact_sheet_grid(per_row, size, seed)
    label_px, top_px = 230, 40
    h, w = grid.shape[:2]
    plt, fig = _figure(w + label_px, h + top_px)
    ax = fig.add_axes((label_px / (w + label_px), 0, w / (w + label_px), h / (h + top_px)))
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([(i + 0.5) * size for i in range(len(names))])
    ax.set_yticklabels([n.replace("_", " ") for n in names], fontsize=11)
    groups = [(PAPER_SPEC.stage_of(n) or (None,))[0] for n in names]  # lineage index, None: other
    for r in range(1, len(names)):
        if groups[r] != groups[r - 1]:
            ax.axhline(r * size - 0.5, color="white", linewidth=3)
    fig.text(
        label_px / (w + label_px),
        1 - 0.5 * top_px / (h + top_px),
        "SMR synthetic marrow: a row per class; lineage rows immature \u2192 mature by true maturity",
        fontsize=12,
        va="center",
    )
    return _save(plt, fig, path)


def _load_square(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
        return np.asarray(im)


def save_comparison(
    path: str | Path, pbc_root: str | Path, per_side: int = 4, size: int = 128, seed: int = 0
) -> Path:
    """Real PBC patches (left) beside synthetic ones of the same cell type (right), a row per type."""
    pbc_root = Path(pbc_root)
    rows = [(p, s) for p, s in PBC_TO_SYNTH.items() if (pbc_root / p).is_dir()]
    if not rows:
        raise FileNotFoundError(f"no PBC class folders ({', '.join(PBC_TO_SYNTH)}) under {pbc_root}")
    gap = size // 4
    grid = np.full((len(rows) * size, 2 * per_side * size + gap, 3), 255, np.uint8)
    for r, (pbc, syn) in enumerate(rows):
        files = sorted(f for f in (pbc_root / pbc).iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for j, f in enumerate(files[:: max(1, len(files) // per_side)][:per_side]):
            grid[r * size : (r + 1) * size, j * size : (j + 1) * size] = _load_square(f, size)
        for j, m in enumerate(_maturities(syn, per_side)):
            x = per_side * size + gap + j * size
            grid[r * size : (r + 1) * size, x : x + size] = _synthetic(syn, m, size, seed, 200 + j)
    label_px, top_px = 400, 40
    h, w = grid.shape[:2]
    plt, fig = _figure(w + label_px, h + top_px)
    ax = fig.add_axes((label_px / (w + label_px), 0, w / (w + label_px), h / (h + top_px)))
    ax.imshow(grid, interpolation="lanczos")
    ax.set_xticks([per_side * size / 2, per_side * size + gap + per_side * size / 2])
    ax.set_xticklabels([])
    ax.set_yticks([(i + 0.5) * size for i in range(len(rows))])
    ax.set_yticklabels([f"{p}  |  {s.replace('_', ' ')}" for p, s in rows], fontsize=11)
    for spine in ax.spines.values():
        spine.set_visible(False)
    top = 1 - 0.5 * top_px / (h + top_px)
    left = label_px / (w + label_px)
    fig.text(
        left + 0.5 * per_side * size / (w + label_px),
        top,
        "PBC (real, CellaVision)",
        ha="center",
        va="center",
    )
    fig.text(
        left + (per_side * size * 1.5 + gap) / (w + label_px), top, "SMR synthetic", ha="center", va="center"
    )
    return _save(plt, fig, path)


def save_slide_figure(path: str | Path, slide_dir: str | Path, crop_px: int = 768) -> Path:
    """The slide's thumbnail beside a full-resolution crop of its centre, with detections marked."""
    import csv

    import tiffslide

    slide_dir = Path(slide_dir)
    with tiffslide.TiffSlide(slide_dir / "slide.tiff") as slide:
        width, height = slide.dimensions
        x0, y0 = (width - crop_px) // 2, (height - crop_px) // 2
        crop = np.asarray(slide.read_region((x0, y0), 0, (crop_px, crop_px)).convert("RGB"))
        thumb = np.asarray(slide.get_thumbnail((crop_px, crop_px)).convert("RGB"))
        mpp = float(slide.properties["tiffslide.mpp-x"])
    with open(slide_dir / "detections.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    plt, fig = _figure(2 * crop_px + 60, crop_px + 60)
    ax1 = fig.add_axes((0.01, 0.02, 0.47, 0.9))
    ax1.imshow(thumb)
    scale = thumb.shape[1] / width
    ax1.add_patch(
        plt.Rectangle(
            (x0 * scale, y0 * scale), crop_px * scale, crop_px * scale, fill=False, color="k", lw=1.5
        )
    )
    ax1.set_title(f"whole slide, {width} x {height} px at {mpp} \u00b5m/px", fontsize=11)
    ax2 = fig.add_axes((0.52, 0.02, 0.47, 0.9))
    ax2.imshow(crop)
    for r in rows:
        x, y = float(r["x"]) - x0, float(r["y"]) - y0
        if 0 <= x < crop_px and 0 <= y < crop_px:
            ax2.text(
                x, y - 28, r["class"].replace("_", " "), fontsize=7, ha="center", color="k", clip_on=True
            )
    ax2.set_title("level 0 (centre crop) with detections.csv classes", fontsize=11)
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(plt, fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m smr.synth.contact_sheet",
        description="Draw the synthetic-marrow contact sheet (and a comparison with real patches).",
    )
    parser.add_argument("out", type=Path, help="contact sheet PNG to write")
    parser.add_argument("--per-row", type=int, default=10, help="cells per class row (10)")
    parser.add_argument("--size", type=int, default=96, help="patch size in pixels (96)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare", type=Path, default=None, metavar="PBC_DIR", help="PBC folder to compare with"
    )
    parser.add_argument("--compare-out", type=Path, default=None, help="comparison PNG to write")
    parser.add_argument(
        "--slide", type=Path, default=None, metavar="SLIDE_DIR", help="an smr synth-slide folder"
    )
    parser.add_argument("--slide-out", type=Path, default=None, help="slide figure PNG to write")
    args = parser.parse_args(argv)
    print(save_contact_sheet(args.out, args.per_row, args.size, args.seed))
    if args.compare is not None:
        out = args.compare_out or args.out.with_name("synthetic_vs_pbc.png")
        print(save_comparison(out, args.compare, seed=args.seed))
    if args.slide is not None:
        print(save_slide_figure(args.slide_out or args.out.with_name("synthetic_slide.png"), args.slide))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
