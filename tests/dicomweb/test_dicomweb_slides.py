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


def run_manifest(tmp: Path, rows: list[tuple[str, str]], model: str) -> tuple[Path, dict]:
    """Run the slide pipeline over ``rows``; its output folder and its counters."""
    from pipelines.report import counters
    from pipelines.slide_inference import run

    manifest = tmp / "slides.csv"
    manifest.write_text("slide_id,uri\n" + "".join(f"{s},{u}\n" for s, u in rows))
    out = tmp / "out"
    result = run(
        ["--slides", str(manifest), "--model", f"two={model}", "--patch_level", "0"]
        + ["--patch_px", "64", "--min_tissue", "0", "--output", str(out), "--no_heatmaps"]
    )
    return out, counters(result)


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
    out, _ = run_manifest(tmp_path, rows, tiny_models["two"])

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


def through(proxy, server, uri: str) -> str:  # noqa: ANN001
    """``uri`` of ``server`` reached through ``proxy`` instead."""
    return uri.replace(
        server.endpoint.removeprefix("http://"), proxy.endpoint.removeprefix("http://")
    )


def frame_read(method: str, path: str) -> bool:
    """A WADO-RS frames request: what a work unit's read is made of."""
    return method == "GET" and "/frames/" in path


def test_a_flaky_store_is_retried_and_changes_nothing(orthanc, shared_data, tiny_models, tmp_path):
    """Every third frame request fails (a 503, or a dropped connection): retried, counted in
    io_retries, and the rows are those of the local file, with no dead letter."""
    from localgcp.fault_proxy import FaultProxy

    server, uris = orthanc
    local = str(shared_data / DICOM_SLIDES["jpeg"])
    with FaultProxy(server.endpoint, fail_every=3, fault_on=frame_read) as proxy:
        web = uris["jpeg"].replace(
            server.endpoint.removeprefix("http://"), proxy.endpoint.removeprefix("http://")
        )
        out, counted = run_manifest(tmp_path, [("web", web), ("file", local)], tiny_models["two"])
    assert proxy.faults["503"] >= 1 and proxy.faults["drop"] >= 1
    assert counted["io_retries"] >= proxy.faults["503"]
    predictions = pd.read_parquet(out / "patch_predictions").sort_values(
        ["slide_id", "y_px", "x_px"]
    )
    web_rows = predictions[predictions.slide_id == "web"]
    file_rows = predictions[predictions.slide_id == "file"]
    assert len(web_rows) == len(file_rows) > 100
    assert web_rows.label.tolist() == file_rows.label.tolist()
    assert read_errors(out) == []


def test_a_hung_store_times_out_into_a_dead_letter(
    orthanc, shared_data, tiny_models, tmp_path, monkeypatch
):
    """Frame requests that never get an answer time out (PATHBEAM_IO_TIMEOUT_S), are retried,
    and end as the slide's dead letter naming the timeout; the local slide still has results."""
    from localgcp.fault_proxy import FaultProxy

    monkeypatch.setenv("PATHBEAM_IO_TIMEOUT_S", "1")
    server, uris = orthanc
    local = str(shared_data / DICOM_SLIDES["raw"])
    with FaultProxy(server.endpoint, fail_every=1, fault_on=frame_read, stall_s=5) as proxy:
        web = uris["raw"].replace(
            server.endpoint.removeprefix("http://"), proxy.endpoint.removeprefix("http://")
        )
        out, _ = run_manifest(tmp_path, [("hung", web), ("file", local)], tiny_models["two"])
    assert proxy.faults["stall"] >= 3
    errors = {e["key"]: e for e in read_errors(out)}
    assert set(errors) == {"hung"}
    assert errors["hung"]["error_type"] == "RemoteIOError"
    assert "PATHBEAM_IO_TIMEOUT_S=1s" in errors["hung"]["message"]
    summaries = pd.read_parquet(out / "slide_summaries")
    assert set(summaries.slide_id) == {"file"}
