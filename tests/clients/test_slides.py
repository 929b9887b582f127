"""Lazy slide reading and patch cropping, checked against whole arrays read with tifffile / numpy."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from smr.clients.detections import Detection
from smr.clients.errors import InputError
from smr.clients.patches import crop_patch, inside, iter_patches, patch_geometry
from smr.clients.slides import ImageSlide, TiffSlideReader, open_slide

MPP = 0.25


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """A 3-level pyramidal TIFF (lossless, tiled) with its resolution, and the levels as arrays."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (61, 83, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((1330, 970), Image.Resampling.BICUBIC))
    levels = [base, base[::2, ::2].copy(), base[::4, ::4].copy()]
    path = tmp_path_factory.mktemp("slide") / "slide.tiff"
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            levels[0],
            tile=(256, 256),
            subifds=2,
            photometric="rgb",
            compression="zlib",
            resolution=(1e4 / MPP, 1e4 / MPP),
            resolutionunit="CENTIMETER",
        )
        for lvl in levels[1:]:
            tif.write(lvl, tile=(256, 256), subfiletype=1, photometric="rgb", compression="zlib")
    return path, [tifffile.imread(path, level=k) for k in range(3)]


PAD = 300


def _padded(level: np.ndarray) -> np.ndarray:
    return np.pad(level, ((PAD, PAD), (PAD, PAD), (0, 0)), constant_values=255)


def _reference_region(level: np.ndarray, x: int, y: int, w: int, h: int, padded=None) -> np.ndarray:
    """Pad the whole level with white and slice: the obvious, slow way."""
    big = _padded(level) if padded is None else padded
    return big[y + PAD : y + PAD + h, x + PAD : x + PAD + w]


def test_tiff_regions_equal_the_whole_level_sliced(pyramid):
    path, levels = pyramid
    with open_slide(path) as slide:
        assert isinstance(slide, TiffSlideReader)
        assert slide.mpp == pytest.approx(MPP)
        assert slide.level_dimensions == tuple((a.shape[1], a.shape[0]) for a in levels)
        rng = np.random.default_rng(1)
        for level, arr in enumerate(levels):
            h, w = arr.shape[:2]
            for _ in range(15):
                x, y = int(rng.integers(-60, w)), int(rng.integers(-60, h))
                rw, rh = int(rng.integers(1, 120)), int(rng.integers(1, 120))
                got = slide.read_region(level, x, y, rw, rh)
                np.testing.assert_array_equal(got, _reference_region(arr, x, y, rw, rh))


def test_plain_images_are_one_level_slides(tmp_path):
    arr = np.random.default_rng(2).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "s.png")
    with open_slide(tmp_path / "s.png") as slide:
        assert isinstance(slide, ImageSlide) and slide.dimensions == (70, 50) and slide.mpp is None
        np.testing.assert_array_equal(
            slide.read_region(0, -5, 40, 30, 20), _reference_region(arr, -5, 40, 30, 20)
        )


def test_unreadable_slides_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="no such slide"):
        open_slide(tmp_path / "missing.svs")
    (tmp_path / "broken.svs").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match="cannot read this slide"):
        open_slide(tmp_path / "broken.svs")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(InputError, match="not a readable image"):
        open_slide(tmp_path / "broken.png")


def test_geometry_picks_the_finest_level_not_finer_than_asked(pyramid):
    path, _ = pyramid
    with open_slide(path) as slide:
        for mpp in (0.2, 0.25, 0.4, 0.5, 0.7, 1.0, 1.6):
            g = patch_geometry(slide, 64, mpp=mpp)
            candidates = [k for k, ds in enumerate(slide.level_downsamples) if MPP * ds <= mpp * 1.001]
            expected = max(candidates) if candidates else 0
            assert g.level == expected
            assert g.region == round(64 * mpp / (MPP * slide.level_downsamples[expected]))
            assert g.mpp == mpp
        g = patch_geometry(slide, 64, level=2)
        assert (g.level, g.region, g.mpp) == (2, 64, pytest.approx(MPP * slide.level_downsamples[2]))
        with pytest.raises(InputError, match="not both"):
            patch_geometry(slide, 64, mpp=0.5, level=1)
        with pytest.raises(InputError, match="level 3 does not exist"):
            patch_geometry(slide, 64, level=3)
        with pytest.raises(InputError) as exc:  # no silent "level 0 as it is" any more
            patch_geometry(slide, 64)
        assert str(exc.value) == (
            "give the microns per pixel the model expects (--mpp) or a pyramid level to read as it is "
            "(--level)"
        )


def test_mpp_needs_a_known_resolution(tmp_path):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "s.png")
    with open_slide(tmp_path / "s.png") as slide:
        with pytest.raises(InputError, match="--slide-mpp"):
            patch_geometry(slide, 16, mpp=0.5)
        assert patch_geometry(slide, 16, mpp=0.5, slide_mpp=0.25).region == 32


@pytest.mark.parametrize("mpp, level", [(None, 0), (None, 1), (0.5, None), (0.8, None)])
def test_block_cropping_yields_each_patch_once_equal_to_a_naive_crop(pyramid, mpp, level):
    path, levels = pyramid
    rng = np.random.default_rng(5)
    with open_slide(path) as slide:
        w, h = slide.dimensions
        dets = [
            Detection(str(i), float(rng.uniform(-10, w + 10)), float(rng.uniform(-10, h + 10)))
            for i in range(120)
        ]
        geom = patch_geometry(slide, 32, mpp=mpp, level=level)
        wanted = [i for i, d in enumerate(dets) if inside(slide, d)]
        assert 0 < len(wanted) < len(dets)
        got = dict(iter_patches(slide, dets, wanted, geom, block=300))
        assert sorted(got) == wanted
        arr = levels[geom.level]
        padded = _padded(arr)
        for i in wanted:
            d = dets[i]
            x = int(np.floor(d.x / geom.downsample - geom.region / 2 + 0.5))
            y = int(np.floor(d.y / geom.downsample - geom.region / 2 + 0.5))
            ref = _reference_region(arr, x, y, geom.region, geom.region, padded)
            if geom.region != 32:
                ref = np.asarray(Image.fromarray(ref).resize((32, 32), Image.Resampling.BILINEAR))
            np.testing.assert_array_equal(got[i], ref)
            np.testing.assert_array_equal(crop_patch(slide, d, geom), ref)


def test_a_corrupt_tile_is_an_error_naming_the_region(tmp_path):
    arr = np.random.default_rng(3).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    path = tmp_path / "corrupt.tiff"
    tifffile.imwrite(path, arr, tile=(256, 256), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\x00garbage" * (count // 8) + b"\x00" * (count % 8)
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 300, 300, 50, 50), arr[300:350, 300:350])
        with pytest.raises(InputError, match=r"cannot read level 0 at x=10, y=20"):
            slide.read_region(0, 10, 20, 50, 50)
