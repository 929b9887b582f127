"""Shared fixtures. The development data set lives beside the checkout in ../shared/data (or where
$SMR_SHARED_DATA says); tests/test_imports.py allows this file to name that path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("SMR_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def pbc_dev() -> Path:
    """The 600-image PBC subset (10 classes x 60) with its lineages.toml."""
    path = _shared_data_dir() / "pbc-dev"
    if not (path / "lineages.toml").is_file():
        pytest.fail(f"development data not found at {path}; set SMR_SHARED_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="session", autouse=True)
def _image_cache(tmp_path_factory):
    """Training's decoded-image cache goes to a temporary folder, not the user's ~/.cache."""
    old = os.environ.get("SMR_CACHE_DIR")
    os.environ["SMR_CACHE_DIR"] = str(tmp_path_factory.mktemp("image-cache"))
    yield
    if old is None:
        os.environ.pop("SMR_CACHE_DIR", None)
    else:
        os.environ["SMR_CACHE_DIR"] = old
