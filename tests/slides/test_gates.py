"""Gate mechanics: the cover rules, cut-down work units, and the verdicts' QuPath areas."""

from __future__ import annotations

import pytest

from transforms.slides.gates import _BoxIndex, _GateBox, kept_unit, verdict_features
from transforms.slides.geometry import PatchBox, WorkUnit


def test_centre_needs_a_passing_gate_patch_under_the_centre_and_any_needs_an_overlap():
    index = _BoxIndex([_GateBox(0, 0, 256, True), _GateBox(256, 0, 256, False)])
    assert index.covers(100, 100, 64, "centre")  # inside the passing patch
    assert not index.covers(224, 0, 64, "centre")  # centre x 256: in the held-back patch
    assert index.covers(224, 0, 64, "any")  # but it overlaps the passing one
    assert not index.covers(300, 0, 64, "any")
    assert not index.covers(100, 300, 64, "any")  # no gate patch there at all
    assert not _BoxIndex([]).covers(0, 0, 64, "any")


def test_gate_patches_of_other_sizes_and_overlap_are_found_across_buckets():
    boxes = [_GateBox(x, 0, 300, x == 600) for x in range(0, 1200, 200)]  # overlapping
    index = _BoxIndex(boxes)
    hits = [x for x in range(0, 1200, 50) if index.covers(x, 100, 50, "centre")]
    assert hits == list(range(600, 900, 50))


def test_a_cut_down_unit_reads_only_the_bounding_box_of_its_kept_patches():
    boxes = [PatchBox(x, y, 128, 1) for y in (0, 128) for x in (0, 128, 256)]
    unit = WorkUnit("s", "u", 1, (0, 0, 192, 128), boxes, 64, downsample=2.0)
    kept = kept_unit(unit, [boxes[4]])
    assert kept.patches == [boxes[4]] and kept.region_lvl == (64, 64, 64, 64)
    assert unit.region_lvl == (0, 0, 192, 128)  # the original is untouched


def test_verdicts_become_a_passed_and_a_held_back_annotation_with_their_areas():
    pytest.importorskip("shapely")
    verdicts = [
        {"x_px": x, "y_px": y, "size_px": 100, "passed": x < 200}
        for x in range(0, 400, 100)
        for y in range(0, 200, 100)
    ]
    features = list(verdict_features(verdicts))
    by_name = {f["properties"]["classification"]["name"]: f for f in features}
    assert set(by_name) == {"Gate passed", "Gate held back"}
    passed = by_name["Gate passed"]["properties"]["measurements"]
    assert passed == {"gate patches": 4, "Area px^2": 40_000.0}
