"""Run directories and exported repositories shared by the export tests (built once per session)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from smr.export.pbtxt import ServingOptions
from smr.export.repository import ExportOptions, export_repository

# the helpers (export_helpers, fake_triton_utils) are imported by their unique module names
sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_helpers import ONE_LINEAGE, TWO_LINEAGES, RunFixture, make_run  # noqa: E402


@pytest.fixture(scope="session")
def run64(tmp_path_factory, pbc_dev) -> RunFixture:
    return make_run(
        tmp_path_factory.mktemp("run64"),
        pbc_dev,
        spec=TWO_LINEAGES,
        image_size=64,
        n_train=20,
        n_val=12,
        real_svm=True,
    )


@pytest.fixture(scope="session")
def run224(tmp_path_factory, pbc_dev) -> RunFixture:
    return make_run(
        tmp_path_factory.mktemp("run224"),
        pbc_dev,
        spec=ONE_LINEAGE,
        image_size=224,
        n_train=4,
        n_val=2,
        real_svm=False,
    )


@pytest.fixture(scope="session")
def repo64(tmp_path_factory, run64) -> Path:
    """``smr export run64`` with the default onnxruntime runtime."""
    repo = tmp_path_factory.mktemp("export") / "repo64"
    export_repository(run64.path, repo, ExportOptions(), log=lambda _: None)
    return repo


@pytest.fixture(scope="session")
def repo224_python(tmp_path_factory, run224) -> Path:
    """``smr export run224 --runtime python --max-batch-size 8`` (parity on 4 real, 8 random images)."""
    repo = tmp_path_factory.mktemp("export") / "repo224"
    options = ExportOptions(serving=ServingOptions(runtime="python", max_batch_size=8), parity_images=4)
    export_repository(run224.path, repo, options, log=lambda _: None)
    return repo
