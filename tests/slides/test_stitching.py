"""Stitching class maps: owned pieces tile the mask across band seams, padding counts for
nothing, the pyramid's tiles rebuild the image, and regions keep their holes."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.models.kinds.base import PatchRegion
from transforms.models.kinds.segmentation import segmented
from transforms.slides.masks import BAND_ROWS, MaskGrid, tiles, write_mask
from transforms.slides.regions import class_regions
from transforms.slides.stitch import MaskPiece, _assemble_band, _split_into_bands


def test_padding_counts_for_nothing_whatever_the_model_says_there():
    labels = np.ones((64, 64), int)  # the model calls everything class 1, padding included
    tissue = np.ones((64, 64), bool)  # even a tissue rule that calls the padding tissue
    tissue[:, 40:] = False  # as Patch.region clears it: the slide ends 40 px in
    region = PatchRegion((960, 0), 64, (1000, 64), (960, 0, 1000, 64), tissue)
    result = segmented(labels, 2, region)
    assert result.class_area_px.tolist() == [0.0, 40 * 64]
    assert result.tissue_area_px == 40 * 64
    assert result.class_fractions.tolist() == [0.0, 1.0]  # of the valid pixels
    assert result.owned.labels.shape == (64, 40) and (result.owned.labels == 2).all()


def test_an_owned_box_takes_the_middle_of_the_overlap_from_the_patch_s_own_map():
    labels = np.arange(64)[None, :].repeat(64, 0) % 2  # columns alternate 0, 1
    region = PatchRegion((100, 0), 64, (164, 64), (116, 0, 148, 64), np.ones((64, 64), bool))
    owned = segmented(labels, 2, region).owned
    assert (owned.col, owned.row, owned.labels.shape) == (116, 0, (64, 32))
    assert (owned.labels[0] - 1 == labels[0, 16:48]).all()  # the patch's columns 16..47


def _grid(width: int, height: int) -> MaskGrid:
    return MaskGrid.of((width, height), 1.0, 1.0, 0.5)


def test_pieces_across_band_seams_rebuild_the_mask_and_its_pyramid(tmp_path):
    width, height = 700, BAND_ROWS + 300
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (height, width)).astype(np.uint8)
    pieces = [
        MaskPiece("s", "m", y, x, truth[y : y + 250, x : x + 250], 1.0, 1.0, (width, height), 0.5)
        for y in range(0, height, 250)
        for x in range(0, width, 250)
    ]
    cuts: dict = {}
    for piece in pieces:
        for key, cut in _split_into_bands(piece):
            cuts.setdefault(key, []).append(cut)
    assert {key[2] for key in cuts} == {0, 1}
    bands = sorted(
        (_assemble_band((key, group))[1][1] for key, group in cuts.items()), key=lambda b: b.index
    )
    grid = _grid(width, height)
    rebuilt = np.concatenate([b.pixels(grid) for b in bands])
    assert (rebuilt == truth).all()
    assert (np.sum([b.counts for b in bands], axis=0)[:4] == np.bincount(truth.ravel())).all()

    import tiffslide

    write_mask(str(tmp_path / "m.ome.tif"), grid, bands)
    slide = tiffslide.TiffSlide(str(tmp_path / "m.ome.tif"))
    assert slide.level_dimensions[0] == (width, height) and len(slide.level_dimensions) == 3
    assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
    level0 = np.asarray(slide.read_region((0, 0), 0, (width, height), as_array=True))[..., 0]
    level1 = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1], as_array=True))
    assert (level0 == truth).all() and (level1[..., 0] == truth[::2, ::2]).all()
    slide.close()


@pytest.mark.parametrize("rows", [1, 7, 256, 300])
def test_tiles_of_strips_of_any_height_rebuild_the_image(rows):
    image = np.random.default_rng(1).integers(0, 255, (601, 515), np.uint8)
    strips = [image[y : y + rows] for y in range(0, 601, rows)]
    got = list(tiles(strips, 515))
    n_cols = -(-515 // 256)
    rebuilt = np.concatenate(
        [
            np.concatenate(got[r * n_cols : (r + 1) * n_cols], axis=1)
            for r in range(len(got) // n_cols)
        ]
    )
    assert (rebuilt[:601, :515] == image).all() and not rebuilt[601:].any()


def test_regions_keep_holes_and_merge_across_band_seams():
    width, height = 300, BAND_ROWS + 200
    mask = np.zeros((height, width), np.uint8)
    mask[BAND_ROWS - 100 : BAND_ROWS + 100, 50:250] = 1  # a square across the seam...
    mask[BAND_ROWS - 20 : BAND_ROWS + 20, 130:170] = 0  # ...with a hole on it
    mask[10:20, 10:20] = 2
    import zlib

    from transforms.slides.masks import Band

    bands = [
        Band(i, zlib.compress(mask[i * BAND_ROWS : (i + 1) * BAND_ROWS].tobytes()), np.zeros(256))
        for i in range(2)
    ]
    grid = MaskGrid.of((2 * width, 2 * height), 2.0, 2.0, 0.5)  # a mask pixel: 2 level-0 px
    from shapely.geometry import shape

    found = list(class_regions(grid, bands, 2))
    assert [c for c, _, _ in found] == [1, 0]  # the seam's region is merged at the end
    (_, second, second_area), (_, first, first_area) = found
    first, second = shape(first), shape(second)
    assert (first_area, second_area) == (first.area, second.area)
    assert first.geom_type == "Polygon" and len(first.interiors) == 1  # one piece, its hole
    assert first.area == pytest.approx(((mask == 1).sum()) * 4)
    assert first.bounds == (100.0, 2 * (BAND_ROWS - 100), 500.0, 2 * (BAND_ROWS + 100))
    assert second.area == 100 * 4


def test_specks_under_the_smallest_region_are_not_traced_but_seam_regions_are_kept():
    import zlib

    from transforms.slides.masks import Band

    rng = np.random.default_rng(3)
    width, height = 400, BAND_ROWS + 100
    mask = (rng.random((height, width)) < 0.3).astype(np.uint8)  # specks of class 0
    mask[198:262, 98:162] = 0
    mask[BAND_ROWS - 7 : BAND_ROWS + 7, 298:312] = 0
    mask[200:260, 100:160] = 1  # one 60 x 60 region...
    mask[220:223, 120:123] = 0  # ...with a hole too small to keep: filled
    mask[BAND_ROWS - 5 : BAND_ROWS + 5, 300:310] = 1  # 10 x 10 across the seam: 5 + 5 rows
    bands = [
        Band(i, zlib.compress(mask[i * BAND_ROWS : (i + 1) * BAND_ROWS].tobytes()), np.zeros(256))
        for i in range(2)
    ]
    grid = MaskGrid.of((width, height), 1.0, 1.0, 0.5)
    kept = list(class_regions(grid, bands, 1, min_px2=80))
    assert sorted(round(area) for _, _, area in kept) == [100, 3600]
    assert all(len(polygon["coordinates"]) == 1 for _, polygon, _ in kept)
