"""Tissue mask: coloured tissue on white glass, Otsu, and patch fractions and areas."""

from __future__ import annotations

import numpy as np

from transforms.slides.geometry import PatchBox
from transforms.slides.tissue import TissueMask, otsu_threshold, tissue_mask


def glass_with_tissue(h=200, w=300, box=(50, 150, 60, 210), seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 238, np.float32) + rng.normal(0, 3, (h, w, 3))
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = np.array([215, 140, 185]) + rng.normal(0, 8, (y1 - y0, x1 - x0, 3))
    return img.clip(0, 255).astype(np.uint8)


def test_brightfield_mask_finds_the_stained_region_and_not_the_glass():
    mask = tissue_mask(glass_with_tissue(), "brightfield")
    assert mask[50:150, 60:210].mean() > 0.98
    outside = mask.copy()
    outside[50:150, 60:210] = False
    assert outside.mean() < 0.01


def test_near_black_pixels_are_not_tissue():
    img = glass_with_tissue()
    img[0:20, 0:20] = (10, 0, 5)  # scanner border: saturated but black
    mask = tissue_mask(img)
    assert not mask[0:20, 0:20].any() and mask[50:150, 60:210].mean() > 0.98


def test_all_glass_gives_an_empty_mask():
    img = np.full((64, 64, 3), 240, np.uint8)
    assert not tissue_mask(img).any()


def test_fluorescence_mask_takes_bright_signal_on_dark_background():
    img = np.zeros((100, 100, 3), np.uint8)
    img[20:60, 30:70, 0] = 120
    mask = tissue_mask(img, "fluorescence")
    assert mask[20:60, 30:70].all() and mask.sum() == 40 * 40


def test_otsu_splits_a_bimodal_sample_between_its_modes():
    values = np.concatenate([np.full(500, 0.1), np.full(500, 0.7)])
    assert 0.1 <= otsu_threshold(values) < 0.7


def test_fraction_and_area_follow_the_mask_downsample_and_mpp():
    mask = np.zeros((10, 10), bool)
    mask[0:5, 0:10] = True
    tm = TissueMask(mask, downsample=8.0)  # one mask pixel = 8 x 8 level-0 pixels
    assert tm.fraction(PatchBox(0, 0, 40, 0)) == 1.0
    assert tm.fraction(PatchBox(0, 32, 16, 0)) == 0.5  # mask row 4 tissue, row 5 not
    assert tm.fraction(PatchBox(0, 40, 40, 0)) == 0.0
    # 50 mask pixels x (8 px x 0.5 um)^2 = 800 um^2
    assert abs(tm.area_mm2(0.5) - 50 * 16 / 1e6) < 1e-12
    assert tm.area_mm2(None) is None
