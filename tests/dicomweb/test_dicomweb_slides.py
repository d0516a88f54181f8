"""DICOM slides served by a real DICOMweb server (Orthanc) give the same rows as the same files
read locally, in one job with SVS rows; a missing series and a malformed URI are dead letters."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from localgcp.orthanc import INSTALL, Orthanc, orthanc_binary
from tests.e2e.cli import read_errors

pytestmark = pytest.mark.dicomweb

DICOM_SLIDES = {
    "jpeg": "dicom_wsi2dcm_jpeg/wsi2dcm_jpeg.dcm",
    "raw": "dicom_wsi2dcm_raw/wsi2dcm_raw.dcm",
    "boxes": "dicom_openslide_boxes/boxes_0.dcm",
}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, shared_data):
    """Orthanc with the three DICOM dev slides uploaded; ``uris``: slide -> series URI."""
    if orthanc_binary() is None:
        pytest.skip(f"Orthanc with its DICOMweb plugin is not installed: {INSTALL}")
    import pydicom

    with Orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        uris = {}
        for name, file in DICOM_SLIDES.items():
            path = shared_data / file
            for instance in sorted(path.parent.glob("*.dcm")):
                server.upload(instance)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uris[name] = server.series_uri(ds.StudyInstanceUID, ds.SeriesInstanceUID)
        yield server, uris


def run_manifest(tmp: Path, rows: list[tuple[str, str]], model: str) -> Path:
    from pipelines.slide_inference import run

    manifest = tmp / "slides.csv"
    manifest.write_text("slide_id,uri\n" + "".join(f"{s},{u}\n" for s, u in rows))
    out = tmp / "out"
    run(
        ["--slides", str(manifest), "--model", f"two={model}", "--patch_level", "0"]
        + ["--patch_px", "64", "--min_tissue", "0", "--output", str(out), "--no_heatmaps"]
    )
    return out


def test_dicomweb_series_give_the_rows_of_the_local_files(
    orthanc, shared_data, tiny_models, tmp_path
):
    server, uris = orthanc
    cmu1 = shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    rows = [(f"web_{n}", uri) for n, uri in uris.items()]
    rows += [(f"file_{n}", str(shared_data / f)) for n, f in DICOM_SLIDES.items()]
    rows += [("svs", str(cmu1))]
    rows += [
        ("missing_series", uris["jpeg"].rsplit("/", 1)[0] + "/1.2.3.4"),
        ("not_a_series", uris["jpeg"].replace("/series/", "/seriez/")),
    ]
    out = run_manifest(tmp_path, rows, tiny_models["two"])

    predictions = pd.read_parquet(out / "patch_predictions")
    columns = ["x_px", "y_px", "size_px", "level", "label"]
    for name in DICOM_SLIDES:
        web = predictions[predictions.slide_id == f"web_{name}"].sort_values(["y_px", "x_px"])
        local = predictions[predictions.slide_id == f"file_{name}"].sort_values(["y_px", "x_px"])
        assert len(web) == len(local), name
        assert len(web) > 100 or name == "boxes"  # boxes is 16 px: no 64 px patch fits
        assert web[columns].to_numpy().tolist() == local[columns].to_numpy().tolist()
        for a, b in zip(web.probs, local.probs, strict=True):
            assert list(a) == pytest.approx(list(b), abs=1e-6)
    assert (predictions.slide_id == "svs").sum() > 100  # one job mixes SVS, DICOM files and web

    summaries = pd.read_parquet(out / "slide_summaries").set_index("slide_id")
    for name in DICOM_SLIDES:
        web, local = summaries.loc[f"web_{name}"], summaries.loc[f"file_{name}"]
        assert (web.width_px, web.height_px, web.slide_mpp) == (
            local.width_px,
            local.height_px,
            local.slide_mpp,
        )
    errors = {e["key"]: (e["stage"], e["error_type"]) for e in read_errors(out)}
    assert errors == {
        "missing_series": ("PlanPatches", "FileNotFoundError"),
        "not_a_series": ("PlanPatches", "SlideError"),
    }
    assert len(rows) == summaries.index.nunique() + len(errors)  # slides in = out + dead
