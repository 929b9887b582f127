"""Small data sets built on the fly: a few-image copy of pbc-dev and a Matek-style nested layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def pbc_small(pbc_dev, tmp_path) -> Path:
    """pbc-dev with its spec and the first 3 images of every class (a copy we may damage)."""
    root = tmp_path / "pbc-small"
    root.mkdir()
    shutil.copy(pbc_dev / "lineages.toml", root / "lineages.toml")
    for folder in sorted(p for p in pbc_dev.iterdir() if p.is_dir()):
        (root / folder.name).mkdir()
        for image in sorted(folder.glob("*.jpg"))[:3]:
            shutil.copy(image, root / folder.name / image.name)
    return root


MATEK_SPEC = """\
# Matek et al. 2021 (TCIA BM_cytomorphology_data), a subset of its class codes
[[lineage]]
name = "granulopoiesis"
classes = ["BLA", "PMO", "MYB"]

[other]
classes = ["LYT"]

[ignore]
folders = ["ART"]
"""


def write_rgb(path: Path, rng: np.random.Generator, size=(20, 24)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def matek_like(tmp_path) -> Path:
    """Matek-style layout: CODE/0001-1000/CODE_00001.jpg, mixed case extensions, PNG and TIFF."""
    rng = np.random.default_rng(0)
    root = tmp_path / "BM_cytomorphology_data"
    (root / "lineages.toml").parent.mkdir(parents=True)
    (root / "lineages.toml").write_text(MATEK_SPEC)
    for code, n in {"BLA": 4, "PMO": 3, "MYB": 2, "LYT": 2, "ART": 2}.items():
        for i in range(1, n + 1):
            ext = {1: ".jpg", 2: ".JPG", 3: ".png", 4: ".tiff"}[i]
            write_rgb(root / code / "0001-1000" / f"{code}_{i:05d}{ext}", rng)
    write_rgb(root / "BLA" / "1001-2000" / "deeper" / "BLA_01001.jpeg", rng)
    (root / "BLA" / "0001-1000" / "._BLA_00001.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "BLA" / "0001-1000" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    return root
