"""Tiled TIFF levels decoded in parallel give tiffslide's pixels exactly, on every real TIFF
slide in ../shared and on a JPEG 2000 slide; NDPI's virtual tiles stay with tiffslide."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tiffslide

from transforms.slides.tiff import TiffSlideFile
from transforms.slides.tiles import _simple

SLIDES = {
    "aperio_cmu1_small_region/CMU-1-Small-Region.svs": True,
    "aperio_openslide_small/small.svs": True,
    "generic_tiff_boxes/boxes.tiff": True,
    "ndpi_tritc/test3-TRITC-2-560.ndpi": False,
}


def regions(width: int, height: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Random regions, and the four corners' (reads that end exactly at the edges)."""
    out = []
    for _ in range(5):
        w, h = int(rng.integers(1, min(width, 600) + 1)), int(rng.integers(1, min(height, 600) + 1))
        out.append(
            (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
        )
    w, h = min(width, 300), min(height, 200)
    out += [
        (0, 0, w, h),
        (width - w, 0, w, h),
        (0, height - h, w, h),
        (width - w, height - h, w, h),
    ]
    return out


def assert_reads_equal_tiffslide(path: str, tiled: bool) -> None:
    ours, theirs = TiffSlideFile(path), tiffslide.TiffSlide(path)
    rng = np.random.default_rng(0)
    for level, (width, height) in enumerate(ours.level_dimensions):
        page = ours._first_page(level)
        assert _simple(page, width, height) == tiled, (path, level)
        ds = ours.level_downsamples[level]
        for x, y, w, h in regions(width, height, rng):
            got = ours.read(level, x, y, w, h)
            loc = (math.ceil(x * ds), math.ceil(y * ds))
            want = np.asarray(theirs.read_region(loc, level, (w, h), as_array=True))
            assert got.shape == want.shape and np.array_equal(got, want), (path, level, x, y)


@pytest.mark.parametrize("name", sorted(SLIDES))
def test_tiled_reads_equal_tiffslide_on_real_slides(shared_data, name):
    assert_reads_equal_tiffslide(str(shared_data / name), SLIDES[name])


def test_a_jpeg2000_slide_reads_the_same(tmp_path):
    from demo.synthetic_slide import make_slide, write_svs

    path = tmp_path / "j2k.svs"
    write_svs(str(path), make_slide(1536, 1280, seed=3).rgb, mpp=0.5, compression="jpeg2000")
    assert_reads_equal_tiffslide(str(path), True)
