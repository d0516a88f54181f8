"""Tissue coverage: the share of a slide's detected tissue its planned patches cover, each tissue
pixel once however many patches overlap it."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.slides.geometry import PatchBox
from transforms.slides.tissue import Coverage, TissueMask


def test_overlapping_boxes_count_each_tissue_pixel_once():
    tissue = TissueMask(np.ones((10, 10), bool), 10.0)  # 100 x 100 level-0 px
    covered = Coverage(tissue)
    covered.add(PatchBox(0, 0, 50, 0))
    covered.add(PatchBox(25, 0, 50, 0))  # overlaps the first by half
    assert covered.fraction() == pytest.approx(7 * 5 / 100)


def test_only_tissue_counts_and_a_slide_without_tissue_has_no_coverage():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # the left half is tissue
    covered = Coverage(TissueMask(mask, 10.0))
    covered.add(PatchBox(0, 0, 100, 0))
    assert covered.fraction() == 1.0
    covered = Coverage(TissueMask(mask, 10.0))
    covered.add(PatchBox(50, 0, 50, 0))  # background only
    assert covered.fraction() == 0.0
    assert Coverage(TissueMask(np.zeros((4, 4), bool), 10.0)).fraction() is None
