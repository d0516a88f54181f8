"""A big patch manifest for one slide is planned block by block, and every row is accounted for."""

from __future__ import annotations

from collections import Counter

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that

from transforms.core.errors import DEAD_LETTER
from transforms.slides.geometry import PatchingConfig
from transforms.slides.plan_manifest import PlanManifestPatches
from transforms.slides.survey import SLIDE_INFO

pytestmark = pytest.mark.pipeline


def _slide(path) -> str:
    import tifffile

    rgb = np.full((2048, 3072, 3), 200, np.uint8)
    rgb[512:1536, 512:2560] = (150, 60, 120)
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), photometric="rgb", compression="zlib")
    return str(path)


def _slide_row(slide_id: str, uri: str) -> dict:
    return {"slide_id": slide_id, "uri": uri, "mpp": 0.5, "metadata": {}, "row": 1}


def _patch_row(slide_id: str, x: int, y: int, size: int = 96, level: int = 0) -> dict:
    return {"slide_id": slide_id, "x_px": x, "y_px": y, "size_px": size, "level": level, "row": 1}


def test_twenty_thousand_patches_of_one_slide_all_planned_and_every_bad_row_accounted(tmp_path):
    rng = np.random.default_rng(7)
    xs, ys = rng.integers(0, 3072 - 96, 20_000), rng.integers(0, 2048 - 96, 20_000)
    good = [_patch_row("big", int(x), int(y)) for x, y in zip(xs, ys, strict=True)]
    out_of_bounds = [_patch_row("big", 3000, 0), _patch_row("big", 0, 2000)]
    of_failed = [_patch_row("broken", i, 0) for i in range(5)]
    of_unknown = [_patch_row("ghost", i, 0) for i in range(3)]
    of_skipped = [_patch_row("done", i, 0) for i in range(4)]
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"")
    slides = [_slide_row("big", _slide(tmp_path / "big.tiff")), _slide_row("broken", str(broken))]
    cfg = PatchingConfig(patch_px=64, patch_mpp=0.5, block_px=512, max_patches_per_unit=32)

    def units_hold_every_good_patch_once(units):
        boxes = [(u.slide_id, b.x_px, b.y_px) for u in units for b in u.patches]
        assert Counter(boxes) == Counter(("big", r["x_px"], r["y_px"]) for r in good)
        assert max(len(u.patches) for u in units) <= 32
        for u in units:
            x, y, w, h = u.region_lvl
            assert all(x <= b.x_px and b.x_px + 96 <= x + w for b in u.patches)
            assert all(y <= b.y_px and b.y_px + 96 <= y + h for b in u.patches)

    def one_info_for_the_planned_slide(infos):
        [info] = infos
        assert (info["slide_id"], info["patches_planned"]) == ("big", [20_000])  # one geometry
        assert (info["width_px"], info["height_px"]) == (3072, 2048)
        assert 0.45 < info["tissue_area_mm2"] < 0.6  # 1024 x 2048 px of tissue at 0.5 µm/px

    def dead_letters_name_each_bad_row(errors):
        keys = Counter((e["key"], e["error_type"]) for e in errors)
        expected = Counter(
            [("big@3000,0", "OutOfBoundsError"), ("big@0,2000", "OutOfBoundsError")]
            + [(f"broken@{i},0", "Rejected") for i in range(5)]
            + [(f"ghost@{i},0", "Rejected") for i in range(3)]
            + [("broken", "UnsupportedFormatError")]
        )
        assert keys == expected
        assert {e["stage"] for e in errors} == {"PlanPatches"}

    rows = good + out_of_bounds + of_failed + of_unknown + of_skipped
    with beam.Pipeline(runner=FnApiRunner()) as p:
        planned = {
            "slides": p | "Slides" >> beam.Create(slides),
            "patches": p | "Patches" >> beam.Create(rows),
            "skipped": p | "Skipped" >> beam.Create(["done"]),
        } | PlanManifestPatches([cfg])
        assert_that(planned["units"], units_hold_every_good_patch_once, label="Units")
        assert_that(planned[SLIDE_INFO], one_info_for_the_planned_slide, label="Info")
        assert_that(planned[DEAD_LETTER], dead_letters_name_each_bad_row, label="Errors")
