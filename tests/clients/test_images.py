"""Checking, resizing and loading the patches a client sends."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from smr.clients.errors import InputError
from smr.clients.images import check_image, find_images, load_image, stack_images


def test_wrong_images_are_refused_naming_the_problem():
    with pytest.raises(InputError, match="image 3: expected dtype uint8"):
        stack_images([np.zeros((8, 8, 3), np.uint8)] * 3 + [np.zeros((8, 8, 3), np.float32)], 8, resize=False)
    with pytest.raises(InputError, match=r"shape \(8, 8\)"):
        check_image(np.zeros((8, 8), np.uint8), 8, resize=False)
    with pytest.raises(InputError, match=r"size 10x8 but the server expects 8x8.*--resize"):
        check_image(np.zeros((8, 10, 3), np.uint8), 8, resize=False)
    with pytest.raises(InputError, match="numpy array"):
        check_image([[1, 2, 3]], 8, resize=True)


def test_resize_matches_pil_and_correct_sizes_pass_untouched():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    batch = stack_images([big, big[:32, :32]], 32, resize=True)
    expected = np.asarray(Image.fromarray(big).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(batch[0], expected)
    np.testing.assert_array_equal(batch[1], big[:32, :32])
    assert batch.dtype == np.uint8 and batch.flags.c_contiguous


def test_loading_converts_to_rgb_and_names_broken_files(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgba = np.dstack([np.full((8, 8, 3), 9, np.uint8), np.full((8, 8), 255, np.uint8)])
    (tmp_path / "sub").mkdir()
    Image.fromarray(rgba).save(tmp_path / "sub" / "a.png")
    (tmp_path / "sub" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    (tmp_path / "notes.txt").write_text("not an image")
    loaded = load_image(tmp_path / "g.png")
    assert loaded.shape == (8, 8, 3) and (loaded[..., 0] == grey).all() and (loaded[..., 2] == grey).all()
    assert (load_image(tmp_path / "sub" / "a.png") == 9).all()
    with pytest.raises(InputError, match="broken.jpg: not a readable image"):
        load_image(tmp_path / "sub" / "broken.jpg")
    found = find_images([tmp_path])
    assert found == sorted([tmp_path / "g.png", tmp_path / "sub" / "a.png", tmp_path / "sub" / "broken.jpg"])
    with pytest.raises(InputError, match="no such file or folder"):
        find_images([tmp_path / "missing"])
