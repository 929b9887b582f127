"""Figures: curve positions per lineage (the paper's Fig. 4), the CV bar chart (Fig. 3), and more.

All functions draw with matplotlib's Agg backend into a PNG file and return its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "positions_figure",
    "nearest_patches",
    "nearest_patches_figure",
    "confusion_figure",
    "cv_bar_chart",
    "training_figure",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(run: Any) -> str:
    c = run.config
    return "TML" if c.loss == "tml" else f"SMR {c.curve}/{c.targets}/{c.loss}"


def nearest_patches(
    lineage_curve: Any, embeddings: np.ndarray, labels: np.ndarray | None = None, k: int = 3
) -> list[np.ndarray]:
    """Per stage of a lineage: indices of the ``k`` embeddings nearest to the stage's target point."""
    targets = lineage_curve.curve.points(np.asarray(lineage_curve.targets, dtype=np.float64))
    emb = np.asarray(embeddings, dtype=np.float64)
    d = ((emb[:, None, :] - targets[None, :, :]) ** 2).sum(axis=2)  # (N, C)
    return [np.argsort(d[:, c], kind="stable")[:k] for c in range(targets.shape[0])]


def positions_figure(panels: Sequence[tuple[Any, Any]], path: str | Path, *, seed: int = 0) -> Path:
    """Per lineage (rows) and run (columns): each cell's position on the curve against its class.

    ``panels`` are ``(run, evaluation)`` pairs (``smr.train.rundir.Run``,
    ``smr.train.evaluate.Evaluation``), e.g. the TML baseline and an SMR run on the same cells.
    Dots are cells (jittered vertically), black diamonds the class means, green circles the
    regression targets and red lines the stage boundaries (decision boundaries on the curve).
    """
    plt = _pyplot()
    spec = panels[0][0].spec
    n_rows, n_cols = len(spec.lineages), len(panels)
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(6.5 * n_cols, 0.55 * max(len(lin.classes) for lin in spec.lineages) * n_rows + 1.5),
        squeeze=False,
    )
    rng = np.random.default_rng(seed)
    cmap = plt.get_cmap("viridis")
    for col, (run, ev) in enumerate(panels):
        for row, (lineage, idx) in enumerate(zip(spec.lineages, spec.lineage_class_indices(), strict=True)):
            ax = axes[row, col]
            lc = run.curves[row]
            n = len(idx)
            for stage, c in enumerate(idx):
                mask = ev.labels == c
                t = ev.positions[mask, row]
                colour = cmap(stage / max(n - 1, 1))
                ax.scatter(
                    t, stage + rng.uniform(-0.25, 0.25, t.size), s=12, alpha=0.6, color=colour, linewidths=0
                )
                if t.size:
                    ax.plot([t.mean()], [stage], marker="D", color="black", markersize=5)
            ax.scatter(
                lc.targets,
                range(n),
                s=60,
                facecolors="none",
                edgecolors="green",
                linewidths=1.5,
                label="target",
                zorder=3,
            )
            for b in lc.boundaries:
                ax.axvline(b, color="red", linewidth=1)
            ax.set_yticks(range(n), lineage.classes)
            ax.set_ylim(n - 0.5, -0.5)
            ax.set_xlim(-0.05, 1.05)
            ax.set_xlabel("position on the curve (0 immature, 1 mature)")
            title = f"{_label(run)}\n{lineage.name}"
            rho = ev.report.get("spearman", {}).get(lineage.name)
            if rho is not None:
                title += f" (Spearman {rho:.2f})"
            ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def nearest_patches_figure(run: Any, ev: Any, path: str | Path, *, k: int = 3) -> Path:
    """Per lineage (rows) and stage (columns): the ``k`` cells nearest to the stage's target."""
    plt = _pyplot()
    spec = run.spec
    n_cols = max(len(lin.classes) for lin in spec.lineages)
    fig, axes = plt.subplots(
        len(spec.lineages),
        n_cols,
        figsize=(1.6 * n_cols * k / 2 + 1, 2.0 * len(spec.lineages)),
        squeeze=False,
    )
    for row, lineage in enumerate(spec.lineages):
        nearest = nearest_patches(run.curves[row], ev.embeddings, k=k)
        for col in range(n_cols):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(lineage.classes):
                continue
            tiles = [ev.images[i] for i in nearest[col]]
            ax.imshow(np.concatenate(tiles, axis=1))
            ax.set_title(f"{lineage.classes[col]}\nt={run.curves[row].targets[col]:.2f}", fontsize=8)
    fig.suptitle(f"{_label(run)}: cells nearest to each stage's target", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_figure(report: Mapping[str, Any], path: str | Path) -> Path:
    """Row-normalised confusion matrix with counts."""
    plt = _pyplot()
    classes = report["classes"]
    cm = np.asarray(report["confusion_matrix"], dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 1.0 + 0.5 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"macro F1 {report['macro_f1']:.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cv_bar_chart(rows: Sequence[Mapping[str, Any]], path: str | Path, *, metric: str = "macro_f1") -> Path:
    """Bars of ``{metric}_mean`` +- ``{metric}_std`` per variant, grouped by loss (the paper's Fig. 3).

    ``rows`` are the CV table's rows (``variant``, ``loss``, ``curve``, ``targets``, ``*_mean``,
    ``*_std``); the TML baseline is drawn as a dashed line across the chart.
    """
    plt = _pyplot()
    rows = [r for r in rows if r.get(f"{metric}_mean") is not None]
    baseline = next((r for r in rows if r["loss"] == "tml"), None)
    others = [r for r in rows if r["loss"] != "tml"]
    losses = list(dict.fromkeys(r["loss"] for r in others))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * (len(others) + 1) + 2), 4.2))
    colours = {"fixed": "#4C72B0", "linear": "#DD8452", "bezier": "#55A868"}
    x, ticks, labels = 0.0, [], []
    if baseline is not None:
        ax.bar(x, baseline[f"{metric}_mean"], yerr=baseline[f"{metric}_std"] or 0, color="grey", capsize=2)
        ticks.append(x)
        labels.append("TML")
        x += 1.5
    for loss in losses:
        for r in (r for r in others if r["loss"] == loss):
            hatch = "//" if r["targets"] == "frequency" else None
            ax.bar(
                x,
                r[f"{metric}_mean"],
                yerr=r[f"{metric}_std"] or 0,
                color=colours.get(r["curve"], "C0"),
                hatch=hatch,
                capsize=2,
                edgecolor="black",
                linewidth=0.3,
            )
            ticks.append(x)
            labels.append(f"{loss}\n{r['curve'][:3]}/{r['targets'][:4]}")
            x += 1
        x += 0.5
    if baseline is not None:
        ax.axhline(baseline[f"{metric}_mean"], color="black", linestyle="--", linewidth=1, label="TML")
    values = [r[f"{metric}_mean"] for r in rows]
    if values:
        lo, hi = min(values), max(values)
        pad = max(0.05, (hi - lo) * 0.5)
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) if metric == "macro_f1" else hi + pad)
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(
        f"{metric.replace('_', ' ')} per variant (mean +- std over folds; hatched: frequency targets)",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_figure(metrics: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Loss terms and validation macro F1 over epochs (from ``metrics.csv`` rows)."""
    plt = _pyplot()
    epochs = [int(r["epoch"]) for r in metrics]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in ("total", "tml", "smr", "tsne_kl"):
        values = [float(r[key]) for r in metrics if r.get(key) not in (None, "")]
        if values and any(values):
            a.plot(epochs[: len(values)], values, label=key)
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(epochs, [float(r["val_macro_f1"]) for r in metrics], label="val macro F1")
    b.set_xlabel("epoch")
    b.set_ylabel("macro F1")
    b.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
