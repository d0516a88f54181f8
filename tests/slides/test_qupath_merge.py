"""QuPath export of classifiers: edge patches are their part inside the slide, and
``--qupath_merge`` merges patches by top class into polygons, holes kept."""

from __future__ import annotations

import pytest
from shapely.geometry import shape

from transforms.models.spec import ModelSpec
from transforms.slides.qupath import feature, merged_features

SPEC = ModelSpec("m", "m.pt2", class_names=("normal", "tumour"))


def _row(x: int, y: int, p: float, valid: int = 100) -> dict:
    return {
        "x_px": x,
        "y_px": y,
        "size_px": 100,
        "valid_width_px": valid,
        "valid_height_px": 100,
        "probs": [1 - p, p],
    }


def test_an_edge_patch_is_its_part_inside_the_slide():
    polygon = shape(feature(_row(900, 0, 0.9, valid=40), SPEC)["geometry"])
    assert polygon.bounds == (900, 0, 940, 100)


def test_patches_merge_by_top_class_with_holes_kept():
    ring = [_row(x, y, 0.9) for x in (0, 100, 200) for y in (0, 100, 200) if (x, y) != (100, 100)]
    rows = [*ring, _row(100, 100, 0.1), _row(500, 0, 0.8)]
    features = list(merged_features(rows, SPEC))
    tumour = [f for f in features if f["properties"]["classification"]["name"] == "tumour"]
    normal = [f for f in features if f["properties"]["classification"]["name"] == "normal"]
    assert len(tumour) == 2 and len(normal) == 1
    big = max((shape(f["geometry"]) for f in tumour), key=lambda p: p.area)
    assert big.is_valid and len(big.interiors) == 1 and big.area == pytest.approx(8 * 100 * 100)
    counts = sorted(f["properties"]["measurements"]["patches"] for f in tumour)
    assert counts == [1, 8]
