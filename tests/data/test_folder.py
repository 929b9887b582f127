"""Folder data sets and image loading."""

from __future__ import annotations

import csv
import math
import os
import time

import numpy as np
import pytest
import tifffile
from PIL import Image

from smr.core.lineages import LineageSpec, SpecError, load_spec
from smr.data.folder import (
    DatasetError,
    FolderDataset,
    ImageError,
    find_images,
    inspect_image,
    load_image,
)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_scan_pbc_dev(pbc_dev):
    start = time.perf_counter()
    ds = FolderDataset.scan(pbc_dev)
    print(f"scan with verify of {len(ds)} images: {time.perf_counter() - start:.2f} s")
    spec = load_spec(pbc_dev / "lineages.toml")
    assert ds.spec == spec and ds.problems == []
    # independent count: every jpg below each class folder
    expected = {
        c: len([p for p in (pbc_dev / c).rglob("*") if p.suffix.lower() == ".jpg"]) for c in spec.classes
    }
    assert ds.counts.tolist() == [expected[c] for c in spec.classes]
    assert len(ds) == sum(expected.values()) == 600
    assert ds.labels.dtype == np.int64
    for sample in ds.samples:
        assert sample.path.parent.name == sample.class_name == spec.classes[sample.label]
        assert math.isnan(sample.maturity)
    assert np.isnan(ds.maturities).all()
    assert len(set(ds.paths)) == len(ds)


def test_load_image_matches_pil(pbc_dev):
    path = sorted((pbc_dev / "band").glob("*.jpg"))[0]
    ref = np.asarray(Image.open(path).convert("RGB"))
    img = load_image(path)
    assert img.dtype == np.uint8 and img.shape == ref.shape and img.shape[2] == 3
    np.testing.assert_array_equal(img, ref)
    small = load_image(path, size=64)
    ref_small = np.asarray(Image.open(path).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(small, ref_small)
    assert load_image(path, size=(32, 48)).shape == (32, 48, 3)
    with pytest.raises(ValueError, match="size"):
        load_image(path, size=0)


def test_corrupt_files_are_reported_and_skipped(pbc_small):
    victim = sorted((pbc_small / "band").glob("*.jpg"))[0]
    _truncate(victim)
    fake = pbc_small / "monocyte" / "fake.png"
    fake.write_text("this is not a PNG")
    empty = pbc_small / "lymphocyte" / "empty.jpg"
    empty.write_bytes(b"")
    ds = FolderDataset.scan(pbc_small)
    bad = {victim, fake, empty}
    assert len(ds.problems) == 3
    for path in bad:
        assert sum(p.startswith(f"{path}: ") for p in ds.problems) == 1, ds.problems
    assert not bad & set(ds.paths)
    all_files = {p for p in pbc_small.rglob("*") if p.suffix in (".jpg", ".png")}
    assert set(ds.paths) == all_files - bad
    spec = ds.spec
    assert ds.counts[spec.class_index("band")] == 2
    assert ds.counts[spec.class_index("monocyte")] == 3
    # without verification the damaged files are kept (they fail later, in load_image)
    unverified = FolderDataset.scan(pbc_small, verify=False)
    assert bad <= set(unverified.paths)
    for path in bad:
        with pytest.raises(ImageError) as info:
            load_image(path)
        assert info.value.path == path and str(path) in str(info.value)


def test_matek_nested_layout(matek_like):
    ds = FolderDataset.scan(matek_like)
    assert ds.spec.classes == ("BLA", "PMO", "MYB", "LYT")
    by_class = {
        c: sorted(s.path.relative_to(matek_like).as_posix() for s in ds.samples if s.class_name == c)
        for c in ds.spec.classes
    }
    assert by_class["BLA"] == [
        "BLA/0001-1000/BLA_00001.jpg",
        "BLA/0001-1000/BLA_00002.JPG",
        "BLA/0001-1000/BLA_00003.png",
        "BLA/0001-1000/BLA_00004.tiff",
        "BLA/1001-2000/deeper/BLA_01001.jpeg",
    ]
    assert ds.counts.tolist() == [5, 3, 2, 2]
    assert ds.problems == []
    assert not any("ART" in str(p) for p in ds.paths)
    for sample in ds.samples:
        assert load_image(sample.path).shape == (20, 24, 3)


def test_find_images_skips_hidden_and_other_files(matek_like):
    found = find_images(matek_like / "BLA")
    names = [p.name for p in found]
    assert "._BLA_00001.jpg" not in names and "notes.txt" not in names
    assert len(found) == 5 and found == sorted(found)


def test_spec_folder_mismatch(matek_like):
    (matek_like / "EOS").mkdir()
    (matek_like / "MYB").rename(matek_like / "MYBX")
    with pytest.raises(SpecError) as info:
        FolderDataset.scan(matek_like)
    message = str(info.value)
    assert str(matek_like) in message
    for name in ("'EOS'", "'MYBX'", "'MYB'"):
        assert name in message


def test_spec_argument_and_missing_spec(matek_like, tmp_path):
    spec_path = tmp_path / "other.toml"
    (matek_like / "lineages.toml").rename(spec_path)
    with pytest.raises(DatasetError, match="no lineages.toml"):
        FolderDataset.scan(matek_like)
    assert FolderDataset.scan(matek_like, spec_path).spec == load_spec(spec_path)
    spec = load_spec(spec_path)
    assert FolderDataset.scan(matek_like, spec).spec is spec
    with pytest.raises(DatasetError, match="not a folder"):
        FolderDataset.scan(tmp_path / "missing")


def test_empty_class_is_a_problem(matek_like):
    for p in (matek_like / "LYT").rglob("*.*"):
        p.unlink()
    ds = FolderDataset.scan(matek_like)
    assert ds.counts[ds.spec.class_index("LYT")] == 0
    assert any("'LYT' has no images" in p for p in ds.problems)


def test_manifest_maturity(matek_like):
    rows = [
        ("BLA/0001-1000/BLA_00001.jpg", "BLA", "granulopoiesis", "0.0"),
        ("BLA/0001-1000/BLA_00002.JPG", "BLA", "granulopoiesis", ""),
        ("PMO/0001-1000/PMO_00001.jpg", "PMO", "granulopoiesis", "0.5"),
        ("LYT/0001-1000/LYT_00001.jpg", "BLA", "", "0.25"),  # class disagrees with the folder
    ]
    with open(matek_like / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "class", "lineage", "maturity"])
        writer.writerows(rows)
    ds = FolderDataset.scan(matek_like, verify=False)
    got = {s.path.relative_to(matek_like).as_posix(): s.maturity for s in ds.samples}
    assert got["BLA/0001-1000/BLA_00001.jpg"] == 0.0
    assert got["PMO/0001-1000/PMO_00001.jpg"] == 0.5
    assert math.isnan(got["BLA/0001-1000/BLA_00002.JPG"])
    assert math.isnan(got["LYT/0001-1000/LYT_00001.jpg"])
    assert sum(not math.isnan(v) for v in got.values()) == 2
    assert any("LYT_00001.jpg" in p and "manifest.csv says class 'BLA'" in p for p in ds.problems)

    (matek_like / "manifest.csv").write_text("file,label\nx,y\n")
    with pytest.raises(DatasetError, match="missing column.*path"):
        FolderDataset.scan(matek_like, verify=False)
    (matek_like / "manifest.csv").write_text("path,class,lineage,maturity\na.jpg,BLA,,young\n")
    with pytest.raises(DatasetError, match=r"manifest.csv:2: maturity 'young'"):
        FolderDataset.scan(matek_like, verify=False)


def test_subset(pbc_small):
    ds = FolderDataset.scan(pbc_small, verify=False)
    idx = np.array([5, 0, 17])
    sub = ds.subset(idx)
    assert sub.paths == [ds.paths[i] for i in idx]
    assert sub.labels.tolist() == ds.labels[idx].tolist()
    assert sub.spec is ds.spec
    mask = np.zeros(len(ds), dtype=bool)
    mask[[1, 2]] = True
    assert ds.subset(mask).paths == ds.paths[1:3]
    assert len(ds.subset([])) == 0


# -- pixel formats ----------------------------------------------------------------------------------
def test_grey_and_palette_png(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g.png"), np.repeat(grey[:, :, None], 3, axis=2))
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).quantize(16).save(tmp_path / "p.png")
    ref = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), ref)


def test_rgba_is_composited_over_white(tmp_path):
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    a = rgba[:, :, 3:4].astype(np.float64) / 255
    ref = np.round(rgba[:, :, :3] * a + 255 * (1 - a))
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), ref.astype(np.uint8))


def test_16bit_images(tmp_path):
    rng = np.random.default_rng(3)
    rgb16 = rng.integers(0, 65536, (8, 6, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    ref = np.round(rgb16 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(load_image(tmp_path / "rgb16.tif"), ref)
    tifffile.imwrite(
        tmp_path / "planar.TIFF", np.moveaxis(rgb16, -1, 0), photometric="rgb", planarconfig="separate"
    )
    np.testing.assert_array_equal(load_image(tmp_path / "planar.TIFF"), ref)
    grey16 = rng.integers(0, 65536, (8, 6), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    ref_grey = np.repeat(np.round(grey16 / 257.0).astype(np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(load_image(tmp_path / "grey16.png"), ref_grey)
    info = inspect_image(tmp_path / "rgb16.tif")
    assert (info.height, info.width, info.format) == (8, 6, "TIFF")


def test_bad_files_raise_image_error(tmp_path):
    (tmp_path / "t.tif").write_bytes(b"II*\x00garbage")
    (tmp_path / "x.png").write_text("hello")
    for name in ("t.tif", "x.png", "missing.jpg"):
        for reader in (load_image, inspect_image):
            with pytest.raises(ImageError) as info:
                reader(tmp_path / name)
            assert str(tmp_path / name) in str(info.value)


def test_symlinked_class_folder(matek_like, tmp_path):
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "lineages.toml").write_text((matek_like / "lineages.toml").read_text())
    for code in ("BLA", "PMO", "MYB", "LYT"):
        os.symlink(matek_like / code, linked / code, target_is_directory=True)
    os.symlink(linked / "BLA", matek_like / "BLA" / "loop", target_is_directory=True)  # a cycle
    ds = FolderDataset.scan(linked, verify=False)
    assert ds.counts.tolist() == [5, 3, 2, 2]


def test_spec_of_dataset_is_data(pbc_dev):
    ds = FolderDataset.scan(pbc_dev, verify=False)
    assert LineageSpec.from_dict(ds.spec.to_dict()) == ds.spec


def test_median_image_size_reads_headers_and_skips_damaged_files(tmp_path):
    import tifffile

    from smr.data.folder import median_image_size

    rng = np.random.default_rng(3)
    shapes = [(30, 40), (32, 40), (34, 44), (36, 48)]  # (height, width)
    paths = []
    for i, (h, w) in enumerate(shapes):
        a = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        p = tmp_path / (f"{i}.png" if i % 2 else f"{i}.tif")
        if p.suffix == ".tif":
            if i == 2:  # planar
                tifffile.imwrite(p, np.moveaxis(a, -1, 0), photometric="rgb", planarconfig="separate")
            else:
                tifffile.imwrite(p, a, photometric="rgb")
        else:
            Image.fromarray(a).save(p)
        paths.append(p)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    got = median_image_size([*paths, tmp_path / "bad.png"])
    assert got == (float(np.median([s[0] for s in shapes])), float(np.median([s[1] for s in shapes])))
    assert median_image_size([]) is None
