"""Planning a patch manifest's boxes: per block, with memory that does not grow with the rows."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pandas as pd
import pytest

from transforms.io import manifests
from transforms.slides.geometry import PatchBox, PatchingConfig, SlideGeometry
from transforms.slides.plan_manifest import NOT_IN_MANIFEST, SlideStatus, _BlockUnits, _PlacePatch

GEOM = SlideGeometry(
    width_px=100_000,
    height_px=80_000,
    level_dims=((100_000, 80_000), (25_000, 20_000)),
    level_downsamples=(1.0, 4.0),
    level_tiles=((256, 256), (256, 256)),
    mpp=0.25,
)
CFG = PatchingConfig(patch_px=224, patch_mpp=0.5, block_px=2048, max_patches_per_unit=64)
STATUSES = {
    "s": SlideStatus({"slide_id": "s", "uri": "s.svs"}, GEOM, 1.0),
    "failed": SlideStatus(failure="slide failed: SlideError: bad tiles"),
    "done": SlideStatus(skipped=True),
}


def _row(slide_id: str, x: int, y: int, size: int = 448, level: int = 0) -> dict:
    return {"slide_id": slide_id, "x_px": x, "y_px": y, "size_px": size, "level": level, "row": 1}


def _place(row: dict) -> list:
    return list(_PlacePatch(CFG.block_px).process(row, STATUSES))


def test_a_patch_is_keyed_by_its_slide_level_and_tile_aligned_block():
    [(key, box)] = _place(_row("s", 5000, 9000))
    assert key == ("s", 0, 9000 // 2048, 5000 // 2048)
    assert box == PatchBox(5000, 9000, 448, 0)
    [(key, _)] = _place(_row("s", 5000, 9000, level=1))
    assert key == ("s", 1, 9000 // 4 // 2048, 5000 // 4 // 2048)


def test_patches_of_failed_missing_or_out_of_bounds_slides_are_dead_letters_and_skipped_vanish():
    def letter(row: dict) -> dict:
        [out] = _place(row)
        return out.value

    assert letter(_row("failed", 0, 0))["message"] == "slide failed: SlideError: bad tiles"
    assert letter(_row("ghost", 0, 0))["message"] == NOT_IN_MANIFEST
    out_of_bounds = letter(_row("s", 99_900, 0))
    assert (out_of_bounds["key"], out_of_bounds["error_type"]) == ("s@99900,0", "OutOfBoundsError")
    assert letter(_row("s", 0, 0, level=2))["error_type"] == "SlideError"
    assert _place(_row("done", 0, 0)) == []


def _one_block(n: int) -> Iterator[PatchBox]:
    """``n`` boxes, all with their corner in block (0, 0): as lazy as a runner's grouped values."""
    for i in range(n):
        yield PatchBox(i * 7 % 1800, i * 13 % 1900, 448, 0)


def _plan_block(n: int) -> tuple[int, int, int]:
    """Plan one block of ``n`` boxes, dropping each unit as it comes; (units, patches, peak B)."""
    units = patches = 0
    tracemalloc.start()
    try:
        for unit in _BlockUnits([CFG]).process((("s", 0, 0, 0), _one_block(n)), STATUSES):
            units += 1
            patches += len(unit.patches)
            assert len(unit.patches) <= CFG.max_patches_per_unit
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return units, patches, peak


def test_planning_a_block_holds_a_bounded_buffer_however_many_patches_it_has():
    small_units, small_patches, small_peak = _plan_block(10_000)
    units, patches, peak = _plan_block(100_000)
    assert (small_patches, patches) == (10_000, 100_000)
    assert units >= 100_000 / CFG.max_patches_per_unit
    # 100k boxes held at once would take >10 MB; planning holds one sort buffer (~1 MB).
    assert peak < 3_000_000
    assert peak < 1.5 * small_peak


def test_units_of_a_block_are_tile_aligned_and_cover_their_patches():
    units = list(_BlockUnits([CFG]).process((("s", 0, 0, 0), _one_block(500)), STATUSES))
    assert sum(len(u.patches) for u in units) == 500
    for unit in units:
        x, y, w, h = unit.region_lvl
        assert x % 256 == 0 and y % 256 == 0
        for box in unit.patches:
            assert x <= box.x_px and box.x_px + box.size_px <= x + w
            assert y <= box.y_px and box.y_px + box.size_px <= y + h


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_manifests_are_read_in_chunks_and_rows_keep_their_numbers(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(manifests, "_CHUNK_ROWS", 3)
    frame = pd.DataFrame({"slide_id": [f"s{i}" for i in range(10)], "x_px": range(10)})
    path = tmp_path / f"patches.{suffix}"
    if suffix == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    rows = list(manifests.read_rows(str(path)))
    assert [r["_row"] for r in rows] == list(range(1, 11))
    assert [r["slide_id"] for r in rows] == list(frame.slide_id)
    assert [int(r["x_px"]) for r in rows] == list(range(10))
