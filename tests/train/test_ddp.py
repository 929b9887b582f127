"""``torchrun --nproc_per_node=2 -m smr.train``: DDP training on CPU (gloo) writes one run dir."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from smr.train import engine, rundir


@pytest.mark.slow
@pytest.mark.integration
def test_torchrun_two_processes_write_a_complete_run(blob_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "smr.train",
        str(blob_data),
        "--out",
        str(out),
        "--image-size",
        "32",
        "--embedding-dim",
        "16",
        "--batch-size",
        "8",
        "--samples-per-class",
        "4",
        "--epochs",
        "2",
        "--workers",
        "0",
        "--svm-c",
        "1",
        "--svm-gamma",
        "scale",
        "--svm-cv",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rundir.is_complete(out)
    # rank 0 alone wrote the log lines and the metrics, one row per epoch
    assert proc.stderr.count("epoch   2/2") == 1
    rows = list(csv.DictReader((out / rundir.METRICS_FILE).read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"]

    # the saved network, SVM and curves belong together: re-embedding the validation images with
    # the loaded model reproduces the saved validation score
    run = rundir.load_run(out)
    from sklearn.metrics import f1_score

    from smr.core.svm import RbfSvm
    from smr.data.folder import FolderDataset, load_image

    data = FolderDataset.scan(blob_data)
    split = rundir.read_split(out)
    index = {p.relative_to(data.root).as_posix(): i for i, p in enumerate(data.paths)}
    val = [index[p] for p in split["val"]]
    emb = engine.compute_embeddings(
        run.model,
        [load_image(data.paths[i], size=32) for i in val],
        mean=run.config.mean,
        std=run.config.std,
        device=torch.device("cpu"),
    )
    pred = np.argmax(RbfSvm.from_dict(run.svm).predict_proba(emb.astype(np.float64)), axis=1)
    f1 = f1_score(data.labels[val], pred, labels=np.arange(4), average="macro", zero_division=0)
    assert f1 == pytest.approx(run.result["best_val_macro_f1"])
