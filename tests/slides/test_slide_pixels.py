"""The pixels the pipeline hands a model are the slide's true pixels (OpenSlide's md5s), through
either reader: tiffslide (SVS, NDPI) and wsidicom (DICOM)."""

from __future__ import annotations

import hashlib

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from transforms.slides.geometry import PatchingConfig
from transforms.slides.plan_manifest import PlanManifestPatches
from transforms.slides.read_patches import ReadPatches

pytestmark = pytest.mark.pipeline


def _md5_of(patch):
    return patch.x_px, patch.y_px, hashlib.md5(patch.pixels.tobytes()).hexdigest()


@pytest.mark.parametrize(
    "slide_file",
    [
        "aperio_cmu1_small_region/CMU-1-Small-Region.svs",
        "ndpi_tritc/test3-TRITC-2-560.ndpi",
        "dicom_wsi2dcm_jpeg/wsi2dcm_jpeg.dcm",
        "dicom_wsi2dcm_raw/wsi2dcm_raw.dcm",
        "dicom_openslide_boxes/boxes_0.dcm",
    ],
)
def test_level0_patches_match_the_reference_md5(shared_data, ground_truth, slide_file):
    truth = ground_truth[slide_file]["pixel_compare"]
    boxes = [truth["origin"]["xywh"], truth["centre"]["xywh"]]
    slide_row = {
        "slide_id": "s",
        "uri": str(shared_data / slide_file),
        "mpp": None,
        "metadata": {},
        "row": 1,
    }
    patch_rows = [
        {"slide_id": "s", "x_px": x, "y_px": y, "size_px": w, "level": 0, "row": i}
        for i, (x, y, w, _) in enumerate(boxes, start=1)
    ]
    expected = [
        (boxes[0][0], boxes[0][1], truth["origin"]["md5_ref_rgb"]),
        (boxes[1][0], boxes[1][1], truth["centre"]["md5_ref_rgb"]),
    ]
    # patches at their own size (no resize), so their md5 is the slide's
    cfg = PatchingConfig(patch_px=boxes[0][2], patch_mpp=0.5, block_px=512)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        slides = p | "Slides" >> beam.Create([slide_row])
        patches = p | "Patches" >> beam.Create(patch_rows)
        planned = {"slides": slides, "patches": patches} | PlanManifestPatches([cfg])
        read = planned["units"] | ReadPatches()
        assert_that(read["patches"] | beam.Map(_md5_of), equal_to(expected))
        assert_that(read["dead_letters"], equal_to([]), label="NoDeadLetters")
