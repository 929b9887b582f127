"""How hard is the synthetic marrow? A quick hand-crafted-feature classifier and its macro F1.

    python benchmarks/synth_baseline.py                 # 3,000 cells of 64 px, 5-fold CV
    python benchmarks/synth_baseline.py --n-cells 6000 --size 96 --workers 2

Features (per patch, from the central disc that holds the cell): colour histograms, the dark
(nuclear) mask's area, number of parts, solidity and elongation, chromatin texture, and the colour
of the pale (cytoplasm) ring. Classifiers: multinomial logistic regression and an RBF SVM, both on
standardised features, scored by stratified 5-fold cross-validation against the labels as written
(with annotator noise) and against the true stage of each cell's latent maturity.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from smr.core.lineages import PAPER_SPEC
from smr.synth.patches import SynthSettings, render_draw
from smr.synth.population import plan_population


def features(rgb: np.ndarray) -> np.ndarray:
    size = rgb.shape[0]
    yy, xx = np.mgrid[:size, :size]
    centre = np.hypot(yy - size / 2, xx - size / 2) < 0.3 * size
    px = rgb.astype(np.float64)
    brightness = px.sum(-1)
    feats: list[float] = []
    for c in range(3):
        hist, _ = np.histogram(px[..., c][centre], bins=12, range=(0, 256))
        feats += list(hist / centre.sum())
    dark = (brightness < 360) & centre
    labels, n = ndimage.label(dark)
    area = dark.sum() / centre.sum()
    feats += [area, float(n)]
    if dark.sum() >= 3:
        ys, xs = np.nonzero(dark)
        cov = np.cov(np.stack([ys, xs]))
        ev = np.sort(np.linalg.eigvalsh(cov))
        try:
            hull = ConvexHull(np.stack([ys, xs], axis=1)).volume
        except QhullError:
            hull = float(dark.sum())
        grey = brightness[dark]
        gy, gx = np.gradient(brightness)
        feats += [
            dark.sum() / max(hull, 1.0),
            math.sqrt(ev[1] / max(ev[0], 1e-6)),
            grey.mean() / 765,
            grey.std() / 765,
            np.hypot(gy, gx)[dark].mean() / 765,
            *(rgb[dark].mean(0) / 255),
        ]
    else:
        feats += [0.0] * 8
    grown = ndimage.binary_dilation(dark, iterations=max(1, size // 24))
    ring = grown & ~dark & centre
    feats += list(rgb[ring].mean(0) / 255) if ring.any() else [0.0, 0.0, 0.0]
    return np.asarray(feats, dtype=np.float64)


def _job(args: tuple) -> np.ndarray:
    draw, settings = args
    return features(render_draw(draw, settings))


def true_stage(draw) -> str:
    where = PAPER_SPEC.stage_of(draw.cls)
    if where is None:
        return draw.cls
    lineage = PAPER_SPEC.lineages[where[0]]
    k = min(int(draw.maturity * len(lineage.classes)), len(lineage.classes) - 1)
    return lineage.classes[k]


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-cells", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    settings = SynthSettings(n_cells=args.n_cells, size=args.size, seed=args.seed)
    draws = plan_population(settings.n_cells, settings.seed, min_per_class=settings.min_per_class)
    start = time.perf_counter()
    jobs = [(d, settings) for d in draws]
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            X = np.stack(pool.map(_job, jobs, chunksize=32))
    else:
        X = np.stack([_job(j) for j in jobs])
    print(
        f"{len(draws)} cells of {args.size} px rendered and described in {time.perf_counter() - start:.1f} s"
    )
    y = np.array([d.cls for d in draws])
    y_true = np.array([true_stage(d) for d in draws])
    print(f"labels that differ from the true stage (annotator noise): {np.mean(y != y_true):.1%}")

    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    models = {
        "logistic regression": make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000)),
        "RBF SVM": make_pipeline(StandardScaler(), SVC(C=10.0, gamma="scale")),
    }
    for name, model in models.items():
        pred = cross_val_predict(model, X, y, cv=folds)
        f1 = f1_score(y, pred, average="macro")
        f1_true = f1_score(y_true, pred, average="macro")
        print(f"{name:>20}: macro F1 {f1:.3f} vs labels, {f1_true:.3f} vs true stages (5-fold CV)")
        if name == "RBF SVM":
            per_class = f1_score(y, pred, average=None, labels=list(PAPER_SPEC.classes))
            for c, v in zip(PAPER_SPEC.classes, per_class, strict=True):
                print(f"{'':>22}{c:<28} F1 {v:.3f}")


if __name__ == "__main__":
    main()
