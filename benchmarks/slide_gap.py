"""Where a synthetic-patch model loses accuracy on a synthetic slide: stain, or the slide's rendering.

A run trained on ``smr synth`` patches reads the cells of a synthetic slide less well than its
validation patches. Two suspects: the slide's own stain (each slide draws one) and the way slide
cells reach the network (rendered at the slide's resolution, JPEG-compressed, then cropped and
resampled to the model's scale by ``score-slide``, where patches are rendered at that scale
directly). This script separates them, one accuracy per line (true classes, no label noise for the
rendered patches):

* fresh patches of the same cells rendered with two of the training stains and with the slide's
  own stain: the stain's effect;
* the slide's cells cropped as ``score-slide`` crops them (``smr data crop``), as they are and
  sharpened: the rendering's;
* the run's validation patches, sharp and blurred by a Gaussian of 0.5 and 0.8 px: how much
  a little softness costs.

    smr data crop SLIDE_DIR/slide.tiff --out CROPS --spec DATA/lineages.toml --size 64 --mpp 0.53125
    python benchmarks/slide_gap.py RUN DATA SLIDE_DIR CROPS
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from smr.core.svm import RbfSvm
from smr.data.folder import FolderDataset
from smr.synth.population import STREAM_CELL, STREAM_STAIN, cell_rng, plan_population, random_cell
from smr.synth.render import render_patch
from smr.synth.stain import sample_stain
from smr.train.engine import compute_embeddings
from smr.train.evaluate import select_subset
from smr.train.rundir import Run, load_run

SEED = 99  # the fresh cells' plan; any seed the training data did not use


def accuracy(run: Run, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``images`` whose SVM class (on the run's embedding) is ``labels``."""
    cfg = run.config
    emb = compute_embeddings(run.model, images, mean=cfg.mean, std=cfg.std, device=torch.device("cpu"))
    pred = np.argmax(RbfSvm.from_dict(run.svm).predict_proba(emb.astype(np.float64)), axis=1)
    return float((pred == labels).mean())


def rendered(run: Run, stain, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """``cells`` fresh patches (true classes) at the run's image size, all with ``stain``."""
    draws = plan_population(cells, SEED, min_per_class=20, label_noise=0.0)
    images = [
        render_patch(
            d.cls,
            d.lineage,
            d.maturity,
            run.config.image_size,
            stain,
            cell_rng(SEED, STREAM_CELL, d.index),
            random_cell,
        )
        for d in draws
    ]
    return np.stack(images), np.array([run.classes.index(d.cls) for d in draws])


def folder_images(dataset: FolderDataset, blur: float = 0.0, sharpen: bool = False) -> np.ndarray:
    """The images of ``dataset``, blurred by a Gaussian of ``blur`` px or sharpened (unsharp mask)."""

    def load(path: str) -> np.ndarray:
        img = Image.open(path).convert("RGB")
        if blur:
            img = img.filter(ImageFilter.GaussianBlur(blur))
        if sharpen:
            img = img.filter(ImageFilter.UnsharpMask(radius=1, percent=80, threshold=0))
        return np.asarray(img)

    return np.stack([load(p) for p in dataset.paths])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run trained on smr synth patches")
    p.add_argument("data", type=Path, help="the run's patch data set (its validation images are used)")
    p.add_argument("slide", type=Path, help="folder of an smr synth-slide (its slide.json names the seed)")
    p.add_argument(
        "crops", type=Path, help="that slide's cells, cropped with smr data crop at the run's scale"
    )
    p.add_argument("--cells", type=int, default=600, help="fresh patches per stain (default: 600)")
    args = p.parse_args(argv)

    run = load_run(args.run)
    synth = json.loads((args.data / "synth.json").read_text())["settings"]
    slide_seed = json.loads((args.slide / "slide.json").read_text())["settings"]["seed"]
    stains = {
        f"training stain {k}": sample_stain(
            cell_rng(synth["seed"], STREAM_STAIN, k), synth["stain_variation"]
        )
        for k in (0, 1)
    } | {
        f"the slide's stain (seed {slide_seed})": sample_stain(cell_rng(slide_seed, STREAM_STAIN, 0)),
    }
    print(f"run {args.run}, {run.config.image_size} px; accuracy (share of cells read as their class):")
    for name, stain in stains.items():
        print(f"  fresh patches, {name}: {accuracy(run, *rendered(run, stain, args.cells)):.3f}")
    crops = FolderDataset.scan(args.crops, run.spec)
    acc = accuracy(run, folder_images(crops), crops.labels)
    print(f"  the slide's cells, cropped as score-slide does: {acc:.3f}")
    acc = accuracy(run, folder_images(crops, sharpen=True), crops.labels)
    print(f"  the same crops, unsharp mask (radius 1 px, 80 %): {acc:.3f}")
    val = select_subset(FolderDataset.scan(args.data, run.spec), args.run, "val")
    for blur in (0.0, 0.5, 0.8):
        acc = accuracy(run, folder_images(val, blur), val.labels)
        print(f"  validation patches (labels with the generator's noise), Gaussian blur {blur} px: {acc:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
