"""``smr evaluate``: score a run directory on a folder data set, exactly as it would be served.

Predictions use the run's numpy SVM (``svm.json`` through :class:`smr.core.svm.RbfSvm`) and curves
(``curves.json`` through :func:`smr.core.curves_json.project_all`) on embeddings of the saved
network, i.e. the same artifacts and arithmetic as the Triton ensemble. The report has per-class
precision/recall/F1, macro F1, the confusion matrix, the mean curve position of every lineage
class, and - for data with known maturity (``manifest.csv``) - the Spearman correlation between
each cell's position on its lineage's curve and its true maturity.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smr.core.curves_json import LineageCurve, project_all
from smr.core.lineages import LineageSpec

__all__ = [
    "maturity_correlation",
    "mean_positions",
    "Evaluation",
    "evaluate_run",
    "format_report",
    "select_subset",
    "warn_about_training_images",
    "EvaluateError",
]


class EvaluateError(ValueError):
    """A run cannot be evaluated on this data (the message says why and how to fix it)."""


def maturity_correlation(
    lineage_curves: Sequence[LineageCurve],
    embeddings: np.ndarray,
    labels: np.ndarray,
    maturities: np.ndarray,
    spec: LineageSpec,
) -> dict[str, float | None]:
    """Per lineage: Spearman rho of curve position vs. true maturity over the lineage's cells.

    A lineage's cells are those whose (true) class belongs to it; cells without a known maturity
    (NaN) are left out. ``None`` where fewer than 3 cells or no variation remain.
    """
    from scipy.stats import spearmanr

    labels = np.asarray(labels)
    maturities = np.asarray(maturities, dtype=np.float64)
    out: dict[str, float | None] = {}
    if len(labels) == 0:
        return {lin.name: None for lin in spec.lineages}
    t, _ = project_all(list(lineage_curves), np.asarray(embeddings, dtype=np.float64))
    for li, (lineage, idx) in enumerate(zip(spec.lineages, spec.lineage_class_indices(), strict=True)):
        mask = np.isin(labels, idx) & np.isfinite(maturities)
        x, y = t[mask, li], maturities[mask]
        if mask.sum() < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            out[lineage.name] = None
            continue
        out[lineage.name] = float(spearmanr(x, y).statistic)
    return out


def mean_positions(
    lineage_curves: Sequence[LineageCurve], embeddings: np.ndarray, labels: np.ndarray, spec: LineageSpec
) -> dict[str, dict[str, float | None]]:
    """Per lineage and class (stage order): mean position t of that class's cells on the curve."""
    labels = np.asarray(labels)
    out: dict[str, dict[str, float | None]] = {}
    if len(labels) == 0:
        return {lin.name: dict.fromkeys(lin.classes) for lin in spec.lineages}
    t, _ = project_all(list(lineage_curves), np.asarray(embeddings, dtype=np.float64))
    for li, (lineage, idx) in enumerate(zip(spec.lineages, spec.lineage_class_indices(), strict=True)):
        out[lineage.name] = {
            name: (float(t[labels == c, li].mean()) if np.any(labels == c) else None)
            for name, c in zip(lineage.classes, idx, strict=True)
        }
    return out


@dataclass
class Evaluation:
    """Everything ``smr evaluate`` computes; ``report`` is the JSON document."""

    report: dict[str, Any]
    embeddings: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray
    positions: np.ndarray  # (N, L) curve positions
    distances: np.ndarray  # (N, L)
    paths: list[Path]
    images: list[np.ndarray]


def select_subset(dataset: Any, run_dir: Path, subset: str) -> Any:
    """The samples of ``dataset`` in the run's ``split.json`` ``subset`` ("val"/"train"), or all."""
    if subset == "all":
        return dataset
    from .rundir import read_split

    wanted = read_split(run_dir)[subset]
    rel = {p.relative_to(dataset.root).as_posix(): i for i, p in enumerate(dataset.paths)}
    missing = [p for p in wanted if p not in rel]
    if missing:
        raise EvaluateError(
            f"{len(missing)} of the run's {subset} images are not in {dataset.root} "
            f"(e.g. {missing[0]}); --subset {subset} needs the data set the run was trained on"
        )
    return dataset.subset([rel[p] for p in wanted])


def warn_about_training_images(dataset: Any, run_dir: Path) -> None:
    """Scores on the images a run was trained on are optimistic: say so."""
    from .rundir import RunDirError, read_split

    try:
        split = read_split(run_dir)
    except RunDirError:
        return
    if not split.get("data") or Path(split["data"]).resolve() != Path(dataset.root).resolve():
        return
    trained = set(split["train"])
    n = sum(p.relative_to(dataset.root).as_posix() in trained for p in dataset.paths)
    if n:
        print(
            f"warning: {n} of {len(dataset)} images were used to train this run; "
            "use --subset val for an unbiased score",
            file=sys.stderr,
        )


def evaluate_run(run: Any, dataset: Any, *, batch_size: int = 64, progress: bool = False) -> Evaluation:
    """Embed ``dataset`` with ``run``'s network and score its SVM and curves (numpy, as served)."""
    import torch
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    from smr.core.svm import RbfSvm

    from .cache import cached_images
    from .engine import compute_embeddings

    classes = list(run.spec.classes)
    config = run.config
    images = cached_images(dataset.paths, config.image_size, progress=progress)
    emb = compute_embeddings(
        run.model,
        images,
        mean=config.mean,
        std=config.std,
        device=torch.device("cpu"),
        batch_size=batch_size,
        progress=progress,
        desc="embedding",
    )
    svm = RbfSvm.from_dict(run.svm)
    proba = np.asarray(svm.predict_proba(emb.astype(np.float64)))
    pred = np.argmax(proba, axis=1)
    labels = dataset.labels
    positions, distances = project_all(run.curves, emb.astype(np.float64))
    all_labels = np.arange(len(classes))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=all_labels, zero_division=0)
    present = np.isin(all_labels, labels)
    report = {
        "run": str(run.path),
        "data": str(dataset.root),
        "images": len(labels),
        "classes": classes,
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        # macro F1 over the classes present in the data (a class with no images has no F1)
        "macro_f1": float(
            f1_score(labels, pred, labels=all_labels[present], average="macro", zero_division=0)
        ),
        "accuracy": float(accuracy_score(labels, pred)),
        "confusion_matrix": confusion_matrix(labels, pred, labels=all_labels).tolist(),
        "mean_position": mean_positions(run.curves, emb, labels, run.spec),
    }
    maturities = dataset.maturities
    if np.isfinite(maturities).any():
        report["spearman"] = maturity_correlation(run.curves, emb, labels, maturities, run.spec)
    return Evaluation(report, emb, labels, pred, proba, positions, distances, list(dataset.paths), images)


def format_report(report: dict[str, Any]) -> str:
    """The report as text tables."""
    classes = report["classes"]
    width = max(12, *(len(c) for c in classes))
    lines = [f"{report['images']} images of {report['data']}  (run {report['run']})", ""]
    lines.append(f"{'class':<{width}}  precision  recall     f1  support")
    for c in classes:
        m = report["per_class"][c]
        lines.append(
            f"{c:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}"
        )
    lines += ["", f"macro F1  {report['macro_f1']:.4f}", f"accuracy  {report['accuracy']:.4f}", ""]
    abbrev = [c[:6] for c in classes]
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * (width + 2) + " ".join(f"{a:>6}" for a in abbrev))
    for c, row in zip(classes, report["confusion_matrix"], strict=True):
        lines.append(f"{c:<{width}}  " + " ".join(f"{v:>6d}" for v in row))
    lines += ["", "mean position on the lineage's curve (0 immature, 1 mature)"]
    for lineage, by_class in report["mean_position"].items():
        parts = [f"{c} {'-' if t is None else f'{t:.3f}'}" for c, t in by_class.items()]
        lines.append(f"  {lineage}: " + ", ".join(parts))
    if "spearman" in report:
        lines += ["", "Spearman correlation of curve position with true maturity"]
        for lineage, rho in report["spearman"].items():
            lines.append(f"  {lineage}: {'n/a' if rho is None else f'{rho:.4f}'}")
    return "\n".join(lines)
