"""Tiny training data and one shared short training run for the training tests.

``blob_data``: a folder data set of 32 px coloured blobs with one lineage (early -> mid -> late:
the blob turns from blue to red and grows with maturity) and one other class, plus a
``manifest.csv`` with each image's true maturity. ``trained_run``: a 2-epoch run on it, with what
the training loop handed to the loss and to the ``on_epoch_end`` callback, recorded.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

BLOB_SPEC = """\
[[lineage]]
name = "blasts"
classes = ["early", "mid", "late"]

[other]
classes = ["other"]
"""
STAGES = ("early", "mid", "late")


def make_blob_dataset(root: Path, *, per_class: int = 10, size: int = 32, seed: int = 0) -> Path:
    """Write the blob data set to ``root`` (see the module docstring); returns ``root``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    rows = []

    def blob(colour, radius, path: Path) -> None:
        img = np.full((size, size, 3), (235.0, 220.0, 225.0)) + rng.normal(0, 8, (size, size, 3))
        cy, cx = size / 2 + rng.normal(0, 1.5, 2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        img[mask] = np.asarray(colour) + rng.normal(0, 10, (int(mask.sum()), 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)

    for stage, name in enumerate(STAGES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            maturity = (stage + rng.uniform(0.05, 0.95)) / len(STAGES)
            path = root / name / f"{name}_{i:03d}.png"
            blob((255 * maturity, 40, 255 * (1 - maturity)), size * (0.12 + 0.22 * maturity), path)
            rows.append((f"{name}/{path.name}", name, "blasts", f"{maturity:.4f}"))
    (root / "other").mkdir(exist_ok=True)
    for i in range(per_class):
        path = root / "other" / f"other_{i:03d}.png"
        blob((40, 200, 60), size * 0.25, path)
        rows.append((f"other/{path.name}", "other", "", ""))
    (root / "lineages.toml").write_text(BLOB_SPEC)
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "class", "lineage", "maturity"])
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def blob_data(tmp_path_factory) -> Path:
    return make_blob_dataset(tmp_path_factory.mktemp("blobs"))


def _tiny_config(**changes: Any):
    """A TrainConfig small enough for tests: 32 px, one or two batches per epoch, a 1-point SVM grid."""
    from smr.train.config import TrainConfig

    base = {
        "image_size": 32,
        "embedding_dim": 16,
        "batch_size": 8,
        "samples_per_class": 4,
        "epochs": 2,
        "patience": 50,
        "workers": 0,
        "device": "cpu",
        "eval_batch_size": 64,
        "svm_c": (1.0, 10.0),
        "svm_gamma": ("scale",),
        "svm_cv": 2,
        "val_fraction": 0.25,
        "lr": 1e-3,
        "seed": 0,
        "tsne_warmup_epochs": 1,
    }
    base.update(changes)
    return TrainConfig(**base).validate()


@pytest.fixture(scope="session")
def tiny_config():
    """Factory: ``tiny_config(**changes)`` -> a validated small TrainConfig."""
    return _tiny_config


@dataclass
class TrainedRun:
    run_dir: Path
    data: Path
    config: Any
    result: Any
    states: list = field(default_factory=list)  # EpochState per epoch
    loss_curves: list = field(default_factory=list)  # curves given to criterion.set_curves, per call


@pytest.fixture(scope="session")
def trained_run(blob_data, tmp_path_factory) -> TrainedRun:
    from smr.train import engine
    from smr.train.losses import SMRCriterion

    config = _tiny_config()
    run = TrainedRun(tmp_path_factory.mktemp("run") / "run", blob_data, config, None)
    original = SMRCriterion.set_curves

    def spy(self, lineage_curves, spec):
        run.loss_curves.append(list(lineage_curves))
        return original(self, lineage_curves, spec)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SMRCriterion, "set_curves", spy)
        run.result = engine.train(
            blob_data, run.run_dir, config, progress=False, on_epoch_end=run.states.append
        )
    return run
