"""Every tissue pixel counts once: grids run past the slide's right and bottom edges (padding
counts for nothing), segmentation class maps are stitched into one pyramidal mask per slide,
traced into QuPath regions, and the class areas come from that mask, with or without overlap.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.e2e.cli import run_module

pytestmark = pytest.mark.e2e

W, H, MPP = 1000, 700, 0.5
TISSUE = (slice(200, H), slice(300, W))
"""The synthetic slide's tissue: a block touching its right and bottom edges."""


@pytest.fixture(scope="module")
def edge_slide(tmp_path_factory) -> dict[str, str]:
    import tifffile
    import torch

    from tests.models_for_tests import WhiteIsOne, export_pt2

    folder = tmp_path_factory.mktemp("edge")
    rgb = np.full((H, W, 3), 245, np.uint8)
    rgb[TISSUE] = (150, 60, 120)
    path = folder / "edge.tiff"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), photometric="rgb", compression="zlib")
    slides = folder / "slides.csv"
    slides.write_text(f"slide_id,uri,mpp\nedge,{path},{MPP}\n")
    torch.manual_seed(0)
    model = export_pt2(WhiteIsOne(), str(folder / "white.pt2"))
    return {"slides": str(slides), "model": model}


def _run(inputs: dict[str, str], out: Path, *flags: str):
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", inputs["slides"], "--model", f"seg={inputs['model']}"),
        *("--model_output", "seg=segmentation", "--class_names", "seg=tissue,white"),
        *("--patch_px", "64", "--patch_mpp", str(MPP), "--min_tissue", "0.01"),
        *("--qupath_min_region_um2", "0", "--output", str(out), *flags),
    )
    assert done.returncode == 0, done.stderr
    return done


def _summary(out: Path) -> dict:
    [summary] = pd.read_parquet(out / "slide_summaries").to_dict("records")
    return summary


def _mask(uri: str) -> tuple[np.ndarray, float]:
    import tiffslide

    slide = tiffslide.TiffSlide(uri)
    try:
        pixels = np.asarray(slide.read_region((0, 0), 0, slide.dimensions, as_array=True))
        return pixels[..., 0], float(slide.properties["tiffslide.mpp-x"])
    finally:
        slide.close()


def test_tissue_at_the_edges_is_analysed_once_and_padding_counts_for_nothing(edge_slide, tmp_path):
    _run(edge_slide, tmp_path / "flat")
    rows = pd.read_parquet(tmp_path / "flat" / "patch_segmentations")
    counted = np.zeros((H, W), int)
    for r in rows.itertuples():
        counted[r.y_px : r.y_px + r.valid_height_px, r.x_px : r.x_px + r.valid_width_px] += 1
    assert (counted[TISSUE] == 1).all()  # every tissue pixel in exactly one valid region
    edge = rows[rows.x_px + rows.size_px > W]
    assert len(edge) and (edge.valid_width_px == W - edge.x_px).all()
    assert (edge.valid_width_px < edge.size_px).all()
    truth_mm2 = (H - 200) * (W - 300) * MPP**2 / 1e6
    summary = _summary(tmp_path / "flat")
    assert summary["coverage"] == pytest.approx(1.0, abs=0.01) and not summary["low_coverage"]
    tissue_mm2, white_mm2 = summary["class_area_mm2"]
    # The model calls every padded pixel "white": none of them is counted.
    assert white_mm2 == 0.0 and tissue_mm2 == pytest.approx(truth_mm2, rel=0.01)
    assert summary["analysed_tissue_mm2"] == pytest.approx(tissue_mm2, rel=0.02)
    mask, mask_mpp = _mask(summary["mask_uri"])
    assert mask.shape == (H, W) and mask_mpp == pytest.approx(MPP)
    assert set(np.unique(mask)) == {0, 1} and (mask == 1).sum() * MPP**2 / 1e6 == pytest.approx(
        tissue_mm2
    )

    _run(edge_slide, tmp_path / "overlap", "--overlap_px", "32")
    overlapped = _summary(tmp_path / "overlap")
    assert overlapped["patch_count"] > summary["patch_count"]
    np.testing.assert_allclose(overlapped["class_area_mm2"], summary["class_area_mm2"], rtol=0.01)


def test_tissue_left_out_by_min_tissue_is_flagged_as_low_coverage(edge_slide, tmp_path):
    done = _run(edge_slide, tmp_path / "out", "--patch_mpp", "2", "--min_tissue", "0.9")
    summary = _summary(tmp_path / "out")
    assert summary["coverage"] < 0.9 and summary["low_coverage"]
    assert "LOW COVERAGE: 1 slide x model(s)" in done.stdout


@pytest.mark.shared_data
def test_a_dicom_whose_matrix_is_not_a_multiple_of_its_tiles_covers_as_the_same_tiff(
    shared_data, edge_slide, tmp_path
):
    import tifffile

    from transforms.slides.reader import open_slide

    dicom = shared_data / "dicom_wsi2dcm_raw" / "wsi2dcm_raw.dcm"
    slide = open_slide(str(dicom))
    try:
        w, h = slide.level_dimensions[0]
        pixels = slide.read(0, 0, 0, w, h)
    finally:
        slide.close()
    assert (w % 256, h % 256) != (0, 0)
    tiff = tmp_path / "same.tiff"
    with tifffile.TiffWriter(tiff) as tif:
        tif.write(pixels, tile=(256, 256), photometric="rgb", compression="zlib")
    slides = tmp_path / "slides.csv"
    slides.write_text(f"slide_id,uri,mpp\ndicom,{dicom},16.783\ntiff,{tiff},16.783\n")
    _run(
        {"slides": str(slides), "model": edge_slide["model"]},
        tmp_path / "out",
        *(
            "--patch_mpp",
            "16.783",
        ),
    )
    summaries = pd.read_parquet(tmp_path / "out" / "slide_summaries").set_index("slide_id")
    dcm, tif_ = summaries.loc["dicom"], summaries.loc["tiff"]
    assert dcm["coverage"] >= 0.98 and dcm["coverage"] == tif_["coverage"]
    assert dcm["patch_count"] == tif_["patch_count"] > (w // 64) * (h // 64) * 0.9
    rows = pd.read_parquet(tmp_path / "out" / "patch_segmentations")
    assert (rows[rows.slide_id == "dicom"].valid_width_px < 64).any()  # past the matrix's end
    np.testing.assert_allclose(dcm["class_area_mm2"], tif_["class_area_mm2"], rtol=1e-9)


@pytest.mark.shared_data
@pytest.mark.parametrize("overlap", ["0", "160"])
def test_cmu1_lavlab_whole_tissue_stitched_mask_and_regions(shared_data, cmu1, tmp_path, overlap):
    from shapely.geometry import shape

    from bench.bench_stain_jitter import model_with_recipe

    (tmp_path / "model").mkdir()
    model = model_with_recipe(tmp_path / "model")
    slides = tmp_path / "slides.csv"
    slides.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", str(slides), "--model", f"shell={model}", "--output", str(tmp_path / "o")),
        *("--overlap_px", overlap, "--qupath_min_region_um2", "0"),
    )
    assert done.returncode == 0, done.stderr
    summary = _summary(tmp_path / "o")
    assert summary["coverage"] >= 0.98
    areas = np.asarray(summary["class_area_mm2"])
    assert areas.sum() == pytest.approx(summary["analysed_tissue_mm2"], rel=0.02)
    mask, mask_mpp = _mask(summary["mask_uri"])
    px = 1283 / 320  # level-0 px per class-map pixel: 320 px patches of 1283 level-0 px
    assert mask.shape == (int(np.ceil(2967 / px)), int(np.ceil(2220 / px)))
    assert mask_mpp == pytest.approx(summary["slide_mpp"] * px, rel=1e-3)
    pixel_mm2 = (summary["slide_mpp"] * px) ** 2 / 1e6  # the tags round the mpp
    in_mask = np.array([(mask == c + 1).sum() for c in range(3)]) * pixel_mm2
    np.testing.assert_allclose(in_mask, areas, rtol=1e-6)
    regions = json.loads(Path(summary["regions_uri"]).read_text())["features"]
    by_class = dict.fromkeys(summary["class_names"], 0.0)
    for feature in regions:
        polygon = shape(feature["geometry"])
        assert polygon.is_valid and polygon.area > 0
        props = feature["properties"]
        assert props["objectType"] == "annotation" and len(props["classification"]["color"]) == 3
        assert props["measurements"]["Area µm^2"] > 0
        by_class[props["classification"]["name"]] += polygon.area * summary["slide_mpp"] ** 2 / 1e6
    np.testing.assert_allclose(list(by_class.values()), areas, rtol=0.01)
    if overlap == "0":  # the mask holds each patch's own class map where it lies
        rows = pd.read_parquet(tmp_path / "o" / "patch_segmentations")
        agree = total = 0
        for r in rows.itertuples():
            grid = np.asarray(r.class_grid).reshape(16, 16)
            centres = (np.arange(16) + 0.5) * 320 / 16
            for i, j in np.ndindex(16, 16):
                x = r.x_px + (int(centres[j]) + 0.5) * px
                y = r.y_px + (int(centres[i]) + 0.5) * px
                if x >= 2220 or y >= 2967:
                    continue
                total += 1
                agree += mask[int(y / px), int(x / px)] == grid[i, j] + 1
        assert total > 1000 and agree == total
