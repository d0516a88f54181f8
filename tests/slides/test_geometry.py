"""Grid geometry: the patch at --patch_mpp maps to the right level-0 box and read level."""

from __future__ import annotations

import pytest

from transforms.core.errors import ConfigError, OutOfBoundsError, SlideError
from transforms.slides.geometry import (
    PatchBox,
    PatchingConfig,
    SlideGeometry,
    box_at_level,
    check_box,
    choose_level,
    grid_boxes,
    grid_spec,
    work_units,
)


def pyramid(width=8192, height=6144, mpp=0.25, downsamples=(1.0, 4.0, 16.0), tile=256):
    dims = tuple((int(width / d), int(height / d)) for d in downsamples)
    return SlideGeometry(width, height, dims, downsamples, ((tile, tile),) * len(dims), mpp)


def test_choose_level_never_upsamples_and_tolerates_rounded_downsamples():
    assert choose_level((1.0, 4.0, 16.0), 2.0) == 0
    assert choose_level((1.0, 4.0, 16.0), 4.0) == 1
    assert choose_level((1.0, 4.0016, 16.01), 4.0) == 1  # scanners store 4.0016 for "4x"
    assert choose_level((1.0, 4.0, 16.0), 100.0) == 2
    assert choose_level((1.0, 4.0, 16.0), 0.9) == 0


def test_half_micron_patch_on_quarter_micron_slide_reads_level0_box_of_twice_the_size():
    spec = grid_spec(pyramid(mpp=0.25), PatchingConfig(patch_px=224, patch_mpp=0.5))
    assert (spec.level, spec.patch_l0_px, spec.stride_l0_px, spec.mpp) == (0, 448, 448.0, 0.5)


def test_one_micron_patch_reads_from_the_4x_level_without_resizing():
    geom = pyramid(mpp=0.25)
    spec = grid_spec(geom, PatchingConfig(patch_px=224, patch_mpp=1.0))
    assert (spec.level, spec.patch_l0_px) == (1, 896)
    box = PatchBox(896, 1792, spec.patch_l0_px, spec.level)
    assert box_at_level(box, geom.level_downsamples[1]) == (224, 448, 224)


def test_overlap_shrinks_the_stride_in_level0_pixels():
    spec = grid_spec(pyramid(mpp=0.5), PatchingConfig(patch_px=256, patch_mpp=0.5, overlap_px=64))
    assert spec.patch_l0_px == 256 and spec.stride_l0_px == 192.0


def test_grid_covers_every_pixel_running_past_the_right_and_bottom_edges():
    geom = pyramid(width=1000, height=700, mpp=0.5, downsamples=(1.0,))
    spec = grid_spec(geom, PatchingConfig(patch_px=224, patch_mpp=0.5))
    boxes = list(grid_boxes(geom, spec))
    assert {(b.x_px, b.y_px) for b in boxes} == {
        (x, y) for x in (0, 224, 448, 672, 896) for y in (0, 224, 448, 672)
    }
    # without overlap a patch owns its part inside the slide
    assert {b.own for b in boxes if b.x_px == 896 and b.y_px == 672} == {(896, 672, 1000, 700)}
    whole = list(grid_boxes(geom, spec, whole_only=True))  # what other tools cut
    assert {(b.x_px, b.y_px) for b in whole} == {
        (x, y) for x in (0, 224, 448, 672) for y in (0, 224, 448)
    }


@pytest.mark.parametrize("overlap", [0, 64, 100, 223])
def test_owned_boxes_tile_the_slide_exactly_once_whatever_the_overlap(overlap):
    import numpy as np

    geom = pyramid(width=1001, height=703, mpp=0.5, downsamples=(1.0,))
    spec = grid_spec(geom, PatchingConfig(patch_px=224, patch_mpp=0.5, overlap_px=overlap))
    counted = np.zeros((703, 1001), int)
    for b in grid_boxes(geom, spec):
        x0, y0, x1, y1 = b.own
        assert b.x_px <= x0 < x1 <= b.x_px + b.size_px and b.y_px <= y0 < y1 <= b.y_px + b.size_px
        counted[y0:y1, x0:x1] += 1
    assert (counted == 1).all()


def test_slide_without_mpp_needs_patch_level():
    geom = pyramid(mpp=None)
    with pytest.raises(SlideError, match="no usable mpp: its file gives none"):
        grid_spec(geom, PatchingConfig(patch_mpp=0.5))
    spec = grid_spec(geom, PatchingConfig(patch_px=256, patch_mpp=None, patch_level=1))
    assert (spec.level, spec.patch_l0_px, spec.mpp) == (1, 1024, None)


def test_too_coarse_slide_and_missing_level_are_slide_errors():
    with pytest.raises(SlideError, match="coarser"):
        grid_spec(pyramid(mpp=2.0), PatchingConfig(patch_mpp=0.5))
    with pytest.raises(SlideError, match="does not exist"):
        grid_spec(pyramid(), PatchingConfig(patch_mpp=None, patch_level=5))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"patch_px": 4}, "patch_px"),
        ({"patch_mpp": None}, "patch_mpp"),
        ({"patch_mpp": 0.5, "patch_level": 1}, "patch_mpp"),
        ({"overlap_px": 224}, "overlap_px"),
        ({"min_tissue": 1.5}, "min_tissue"),
        ({"tissue_method": "magic"}, "tissue_method"),
    ],
)
def test_bad_patching_configs_name_the_field_and_the_cli_names_the_flag(kwargs, field):
    from pipelines.options import flags_named

    with pytest.raises(ConfigError, match=f"`{field}`"):
        PatchingConfig(**kwargs)
    with pytest.raises(ConfigError, match=f"--{field}\\b") as raised, flags_named():
        PatchingConfig(**kwargs)
    assert "`" not in str(raised.value)


def test_manifest_boxes_out_of_bounds_or_on_missing_levels_are_rejected():
    geom = pyramid(width=1000, height=800)
    check_box(geom, PatchBox(200, 0, 800, 0))
    with pytest.raises(OutOfBoundsError):
        check_box(geom, PatchBox(900, 0, 200, 0))
    with pytest.raises(OutOfBoundsError):
        check_box(geom, PatchBox(-1, 0, 10, 0))
    with pytest.raises(SlideError, match="level 7"):
        check_box(geom, PatchBox(0, 0, 10, 7))


def test_work_units_are_tile_aligned_hold_every_patch_once_and_respect_the_cap():
    geom = pyramid(width=5000, height=3000, mpp=0.5, downsamples=(1.0, 4.0), tile=240)
    cfg = PatchingConfig(patch_px=224, patch_mpp=0.5, block_px=1000, max_patches_per_unit=10)
    boxes = list(grid_boxes(geom, grid_spec(geom, cfg)))
    units = list(work_units("s", "u", geom, boxes, cfg, 0.5))
    seen = [b for u in units for b in u.patches]
    assert sorted(seen, key=lambda b: (b.y_px, b.x_px)) == boxes
    for unit in units:
        x, y, w, h = unit.region_lvl
        assert len(unit.patches) <= 10
        assert x % 240 == 0 and y % 240 == 0
        assert (x + w) % 240 == 0 or x + w == geom.level_dims[unit.level][0]
        assert unit.slide_dims == (5000, 3000)
        for b in unit.patches:  # the region holds each patch's part inside the slide
            assert x <= b.x_px and min(b.x_px + b.size_px, 5000) <= x + w
            assert y <= b.y_px and min(b.y_px + b.size_px, 3000) <= y + h


def test_manifest_patches_take_their_mpp_from_the_slide_including_a_manifest_override():
    geom = pyramid(width=4096, height=4096, mpp=0.25)  # as if the manifest gave 0.25
    cfg = PatchingConfig(patch_px=128, patch_mpp=0.5)
    boxes = [PatchBox(0, 0, 512, 1), PatchBox(1024, 0, 128, 0)]
    units = list(work_units("s", "u", geom, boxes, cfg, None))
    got = {b.size_px: u.patch_mpp(b) for u in units for b in u.patches}
    assert got == {512: 1.0, 128: 0.25}
    grid_units = list(work_units("s", "u", geom, boxes, cfg, 0.5))
    assert {u.patch_mpp(b) for u in grid_units for b in u.patches} == {0.5}
