"""DICOM slides served by a real DICOMweb server (Orthanc), and kept on gs:// (the GCS
emulator), give the same rows as the same files read locally, in one job with SVS and NDPI rows;
work units fetch only their frames, one request each; a missing series, a malformed URI, a store
that wants credentials and a hung store are dead letters."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from localgcp.orthanc import INSTALL, Orthanc, orthanc_binary
from tests.dicomweb.j2k import jpeg2000_copy
from tests.e2e.cli import read_errors

pytestmark = pytest.mark.dicomweb
BUCKET = "gs://dicom-bucket"

DICOM_SLIDES = {
    "jpeg": "dicom_wsi2dcm_jpeg/wsi2dcm_jpeg.dcm",
    "raw": "dicom_wsi2dcm_raw/wsi2dcm_raw.dcm",
    "boxes": "dicom_openslide_boxes/boxes_0.dcm",
}


@pytest.fixture(scope="module")
def dicom_files(tmp_path_factory, shared_data) -> dict[str, Path]:
    """The DICOM dev slides, and a JPEG 2000 copy of the uncompressed one (``j2k``)."""
    files = {name: shared_data / file for name, file in DICOM_SLIDES.items()}
    folder = tmp_path_factory.mktemp("j2k")
    files["j2k"] = jpeg2000_copy(files["raw"], folder / "j2k.dcm")
    return files


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, dicom_files):
    """Orthanc with the DICOM slides uploaded; ``uris``: slide -> series URI."""
    if orthanc_binary() is None:
        pytest.skip(f"Orthanc with its DICOMweb plugin is not installed: {INSTALL}")
    import pydicom

    with Orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        uris = {}
        for name, path in dicom_files.items():
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


def test_dicomweb_and_gcs_dicom_give_the_rows_of_the_local_files(
    orthanc, dicom_files, local_gcp, shared_data, tiny_models, tmp_path
):
    """JPEG 2000 included: its frames come from the store as stored (Orthanc 1.10 cannot
    transcode them, and answered the old request with a 500)."""
    server, uris = orthanc
    cmu1 = shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    ndpi = shared_data / "ndpi_tritc" / "test3-TRITC-2-560.ndpi"
    rows = [(f"web_{n}", uri) for n, uri in uris.items()]
    rows += [(f"file_{n}", str(path)) for n, path in dicom_files.items()]
    # On gs://: the two single-file slides as files, and boxes as a folder of its instances.
    for name in ("jpeg", "raw"):
        rows.append(
            (
                f"gcs_{name}",
                local_gcp.upload(shared_data / DICOM_SLIDES[name], f"{BUCKET}/{name}/slide.dcm"),
            )
        )
    for instance in sorted((shared_data / "dicom_openslide_boxes").glob("*.dcm")):
        local_gcp.upload(instance, f"{BUCKET}/boxes/{instance.name}")
    rows.append(("gcs_boxes", f"{BUCKET}/boxes"))
    rows += [("svs", str(cmu1)), ("ndpi", str(ndpi))]
    rows += [
        ("missing_series", uris["jpeg"].rsplit("/", 1)[0] + "/1.2.3.4"),
        ("not_a_series", uris["jpeg"].replace("/series/", "/seriez/")),
        ("missing_gcs_folder", f"{BUCKET}/no-such-slide"),
    ]
    out, _ = run_manifest(tmp_path, rows, tiny_models["two"])

    predictions = pd.read_parquet(out / "patch_predictions")
    columns = ["x_px", "y_px", "size_px", "level", "label"]
    summaries = pd.read_parquet(out / "slide_summaries").set_index("slide_id")
    for name in dicom_files:
        local = predictions[predictions.slide_id == f"file_{name}"].sort_values(["y_px", "x_px"])
        assert len(local) > 100 or name == "boxes"  # boxes is 16 px: no 64 px patch fits
        for source in ("web", "gcs") if name in DICOM_SLIDES else ("web",):
            got = predictions[predictions.slide_id == f"{source}_{name}"]
            got = got.sort_values(["y_px", "x_px"])
            assert got[columns].to_numpy().tolist() == local[columns].to_numpy().tolist()
            for a, b in zip(got.probs, local.probs, strict=True):
                assert list(a) == pytest.approx(list(b), abs=1e-6)
            seen, truth = summaries.loc[f"{source}_{name}"], summaries.loc[f"file_{name}"]
            assert (seen.width_px, seen.height_px, seen.slide_mpp) == (
                truth.width_px,
                truth.height_px,
                truth.slide_mpp,
            )
    # One job mixes SVS, NDPI, and DICOM from files, gs:// and a DICOMweb store.
    assert (predictions.slide_id == "svs").sum() > 100
    assert (predictions.slide_id == "ndpi").sum() > 0
    errors = {e["key"]: (e["stage"], e["error_type"]) for e in read_errors(out)}
    assert errors == {
        "missing_series": ("PlanPatches", "FileNotFoundError"),
        "not_a_series": ("PlanPatches", "SlideError"),
        "missing_gcs_folder": ("PlanPatches", "FileNotFoundError"),
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
        web = through(proxy, server, uris["jpeg"])
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
        web = through(proxy, server, uris["raw"])
        out, _ = run_manifest(tmp_path, [("hung", web), ("file", local)], tiny_models["two"])
    assert proxy.faults["stall"] >= 3
    errors = {e["key"]: e for e in read_errors(out)}
    assert set(errors) == {"hung"}
    assert errors["hung"]["error_type"] == "RemoteIOError"
    assert "PATHBEAM_IO_TIMEOUT_S=1s" in errors["hung"]["message"]
    summaries = pd.read_parquet(out / "slide_summaries")
    assert set(summaries.slide_id) == {"file"}


def test_a_work_unit_fetches_only_its_frames_in_one_request(
    orthanc, shared_data, tiny_models, tmp_path
):
    """Through a counting proxy: reading the patches of a DICOMweb slide takes at most one
    WADO-RS request per work unit, fetches each frame once and no whole instance, and the
    bytes_read counter is what the store sent for those frames."""
    import pydicom

    from localgcp.fault_proxy import FaultProxy

    server, uris = orthanc
    with FaultProxy(server.endpoint) as proxy:
        web = through(proxy, server, uris["jpeg"])
        _, counted = run_manifest(tmp_path, [("web", web)], tiny_models["two"])
    # The slide is opened twice, each time with one QIDO search: to plan, then to read.
    opens = [i for i, (path, _) in enumerate(proxy.gets) if path.endswith("/instances")]
    assert len(opens) == 2
    reading = proxy.gets[opens[1] :]
    frames = [(path, n) for path, n in reading if "/frames/" in path]
    asked = [int(f) for path, _ in frames for f in path.rsplit("/frames/", 1)[1].split(",")]
    n_frames = int(pydicom.dcmread(shared_data / DICOM_SLIDES["jpeg"]).NumberOfFrames)
    units = counted["work_units_read"]
    # Opening a series fetches each instance's first frame as stored (its transfer syntax);
    # then one request per unit at most (neighbouring units share frames wsidicom has
    # cached), with several frames each, in that syntax.
    assert frames[0][0].endswith("/frames/1")
    assert 1 <= len(frames) - 1 <= units > 1 and len(asked) > len(frames)
    assert sorted(asked[1:]) == sorted(set(asked[1:]))
    assert set(asked) <= set(range(1, n_frames + 1))
    whole = [p for p, _ in proxy.gets if p.split("?")[0].rstrip("/").split("/")[-2] == "instances"]
    assert whole == []  # no instance fetched whole
    assert counted["bytes_read"] == sum(n for _, n in frames[1:])
    for path, n in reading:
        print(f"{n:>8} B  {path.rsplit('/', 1)[-1][:40]}")  # shown with -s: the requests


def test_a_store_that_wants_credentials_is_a_dead_letter_naming_them(
    tmp_path_factory, shared_data, tiny_models, tmp_path
):
    """Orthanc with authentication on answers 401: the slide's dead letter says which
    credentials were sent (none, over plain http) and what to grant."""
    with Orthanc(tmp_path_factory.mktemp("locked"), users={"reader": "s3cret"}) as locked:
        uri = locked.series_uri("1.2.3", "1.2.3.4")
        local = str(shared_data / DICOM_SLIDES["raw"])
        out, _ = run_manifest(tmp_path, [("locked", uri), ("file", local)], tiny_models["two"])
    errors = {e["key"]: e for e in read_errors(out)}
    assert set(errors) == {"locked"}
    assert errors["locked"]["error_type"] == "SlideError"
    assert "refused access (401) with no credentials (plain http)" in errors["locked"]["message"]
    assert set(pd.read_parquet(out / "slide_summaries").slide_id) == {"file"}


def test_https_credentials_are_named_never_their_token(monkeypatch):
    """The message names the ADC account and project; the access token never appears."""
    import google.auth
    from google.oauth2 import service_account

    from transforms.slides.dicomweb import credentials_used, parse_series

    class Account(service_account.Credentials):
        def __init__(self) -> None:  # a real credentials class, without a key file
            self._service_account_email = "reader@proj.iam.gserviceaccount.com"
            self.token = "ya29.secret-token"

    monkeypatch.setattr(google.auth, "default", lambda **_: (Account(), "proj"))
    ref = parse_series(
        "dicomweb+https://healthcare.googleapis.com/v1/projects/p/locations/l"
        "/datasets/d/dicomStores/s/dicomWeb/studies/1.2/series/1.2.3"
    )
    said = credentials_used(ref)
    assert said == (
        "Application Default Credentials (reader@proj.iam.gserviceaccount.com, project proj)"
    )
    assert "ya29" not in said


def test_a_trickling_or_endless_store_is_a_dead_letter_and_the_good_slide_finishes(
    monkeypatch, shared_data, tiny_models, tmp_path
):
    """A store that answers 200 and then one byte a second hung the whole run (each socket read
    returned in time, so the per-read timeout never tripped; killed at 280 s, no output); a fast
    endless body grew the process by 1.6 GB. Now every response has a total deadline and a size
    cap: both slides are dead letters naming the limit, and the good slide has its rows."""
    import time

    from localgcp.bad_servers import MisbehavingServer

    monkeypatch.setenv("PATHBEAM_IO_TIMEOUT_S", "5")
    monkeypatch.setenv("PATHBEAM_IO_DEADLINE_S", "2")
    cmu1 = shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    with MisbehavingServer(interval_s=0.5, max_s=60) as bad:
        root = bad.endpoint.replace("http://", "dicomweb+http://")
        rows = [
            ("good", str(cmu1)),
            ("trickle", f"{root}/trickle/dicom-web/studies/1.2/series/1.2.3"),
            ("endless", f"{root}/endless/dicom-web/studies/1.2/series/1.2.3"),
        ]
        started = time.monotonic()
        out, _ = run_manifest(tmp_path, rows, tiny_models["two"])
        took = time.monotonic() - started
    errors = {e["key"]: e for e in read_errors(out)}
    assert set(errors) == {"trickle", "endless"}
    assert errors["trickle"]["error_type"] == "RemoteIOError"
    assert "PATHBEAM_IO_DEADLINE_S=2" in errors["trickle"]["message"]
    assert errors["endless"]["error_type"] == "ResponseTooLarge"
    assert "more than what was asked for" in errors["endless"]["message"]
    predictions = pd.read_parquet(out / "patch_predictions")
    assert set(predictions.slide_id) == {"good"} and len(predictions) > 100
    assert took < 120  # three attempts of a 2 s deadline each, not a hang
