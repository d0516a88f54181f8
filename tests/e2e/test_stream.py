"""The stream end to end on real components: slides land in the GCS emulator and a DICOM series
in Orthanc, notifications go through the Pub/Sub emulator (the DICOM ones published by the test
in the Healthcare API's layout, as Orthanc publishes none), and ``python -m
pipelines.slide_stream`` runs on the streaming direct runner in a subprocess, stopped after a
bounded wait. Then: each slide's rows once, the broken slide a dead letter, the non-slide object
ignored, the series read once and after its second instance, the runs row kept up to date; and a
stream killed mid-slide (SIGKILL) and restarted on the same subscription finishes every slide,
each once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from localgcp.cluster import stop_group
from localgcp.notify import gcs_message
from localgcp.orthanc import INSTALL as ORTHANC_INSTALL
from localgcp.orthanc import Orthanc, orthanc_binary
from localgcp.pubsub import INSTALL, PubSubEmulator, emulator_binary
from tests.conftest import REPO
from tests.gcp import bq_table
from tests.stream.landing import STORE, store_series, wait_until

pytestmark = pytest.mark.gcp
SLIDES = {
    "s1.svs": "aperio_cmu1_small_region/CMU-1-Small-Region.svs",
    "s2.tiff": "generic_tiff_boxes/boxes.tiff",
    "s3.svs": "aperio_openslide_small/small.svs",
    "broken.svs": "negative_unreadable_svs/unreadable.svs",
}


@pytest.fixture
def pubsub(tmp_path):
    if emulator_binary() is None:
        pytest.skip(f"the Pub/Sub emulator is not installed: {INSTALL}")
    with PubSubEmulator(tmp_path / "pubsub") as emulator:
        yield emulator


def _start(out: Path | str, subscriptions: list[str], model: str, env: dict, *extra: str):
    logs = out.parent if isinstance(out, Path) else Path(env["STREAM_LOGS"])
    log = (logs / f"stream-{time.monotonic_ns()}.log").open("wb")
    flags = [f"--subscription={s}" for s in subscriptions]
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.slide_stream", *flags, "--model", f"two={model}",
         "--patch_level", "0", "--patch_px", "64", "--min_tissue", "0", "--no_heatmaps",
         "--window_s", "3", "--output", str(out), "--run_id", "stream-test", *extra],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _files(out: Path, table: str) -> list[Path]:
    return sorted((out / table).glob("*.parquet")) if (out / table).exists() else []


def _summaries(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in _files(out, "slide_summaries")])


def test_slides_and_a_dicom_series_are_processed_once_as_they_land(
    tmp_path, pubsub, local_gcp, shared_data, tiny_models
):
    if orthanc_binary() is None:
        pytest.skip(f"Orthanc with its DICOMweb plugin is not installed: {ORTHANC_INSTALL}")
    import pydicom

    for name, path in SLIDES.items():
        local_gcp.upload(shared_data / path, f"gs://scans/{name}")
    instances = sorted((shared_data / "dicom_openslide_boxes").glob("*.dcm"))
    first = pydicom.dcmread(instances[0], stop_before_pixels=True)
    study, series = first.StudyInstanceUID, first.SeriesInstanceUID
    out = tmp_path / "out"
    gcs_sub, dicom_sub = pubsub.subscription("scans"), pubsub.subscription("dicom")
    env = {**os.environ, **pubsub.env()}
    with Orthanc(tmp_path / "orthanc") as store:
        proc = _start(
            out, [gcs_sub, dicom_sub], tiny_models["two"], env,
            "--dicomweb_root", f"{STORE}={store.endpoint}/dicom-web", "--quiet_s", "15",
        )  # fmt: skip
        try:
            for name in ("s1.svs", "s2.tiff", "s3.svs", "s1.svs", "broken.svs", "notes.txt"):
                data, attributes = gcs_message("scans", name)
                pubsub.publish("scans", data, **attributes)
            store_series(store, pubsub, instances, gap_s=10)  # the 2nd level 10 s later
            wait_until(lambda: len(_files(out, "slide_summaries")) >= 4, 240, proc)
            wait_until(
                lambda: (out / "runs").exists() and len(_files(out, "errors")) >= 1, 60, proc
            )
            time.sleep(8)  # two more windows: a duplicate, were there one, would be written
        finally:
            stop_group(proc, 20)
    summaries = _summaries(out)
    assert sorted(summaries.slide_id) == sorted(["s1", "s2", "s3", series])
    assert (summaries.latency_s > 0).all()
    rows = pd.concat([pd.read_parquet(p) for p in _files(out, "patch_predictions")])
    counted = rows.groupby("slide_id").size()
    for s in summaries.itertuples():
        assert counted.get(s.slide_id, 0) == s.patch_count  # each slide's rows exactly once
    assert len(rows) == len(rows.drop_duplicates(["slide_id", "x_px", "y_px"]))
    dicom = summaries[summaries.slide_id == series].iloc[0]
    assert dicom.uri == store.series_uri(study, series) and dicom.patch_count > 0
    errors = pd.concat([pd.read_parquet(p) for p in _files(out, "errors")])
    assert any("broken" in key for key in errors.key)  # unreadable: a dead letter
    [run] = pd.read_parquet(out / "runs").to_dict("records")
    assert run["status"] == "running" and run["inputs_with_results"] == 4
    assert run["inputs_ignored"] == 1  # notes.txt
    assert any(d["count"] == 1 and "broken" in d["example"] for d in run["dead_letters"])
    assert run["latency_p50_s"] is not None and run["latency_p50_s"] > 0
    done = {p.stem for p in (out / "_inbox").glob("*.done")}
    assert done >= {"s1", "s2", "s3"}


def test_a_stream_killed_mid_slide_and_restarted_finishes_every_slide_once(
    tmp_path, pubsub, local_gcp, shared_data, tiny_models
):
    import signal

    for name in ("s1.svs", "s2.tiff", "s3.svs"):
        local_gcp.upload(shared_data / SLIDES[name], f"gs://again/{name}")
    out = tmp_path / "out"
    sub = pubsub.subscription("again")
    env = {**os.environ, **pubsub.env()}
    proc = _start(out, [sub], tiny_models["two"], env)
    try:
        for name in ("s1.svs", "s2.tiff", "s3.svs"):
            data, attributes = gcs_message("again", name)
            pubsub.publish("again", data, **attributes)
        wait_until(lambda: len(list((out / "_inbox").glob("*.json"))) >= 1, 120, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no teardown, no flush: a crash
        proc.wait()
    assert len(list((out / "_inbox").glob("*.done"))) < 3  # it died before finishing
    proc = _start(out, [sub], tiny_models["two"], env)  # the same subscription and folder
    try:
        wait_until(lambda: len(list((out / "_inbox").glob("*.done"))) == 3, 240, proc)
        time.sleep(6)
    finally:
        stop_group(proc, 20)
    summaries = _summaries(out)
    assert sorted(summaries.slide_id) == ["s1", "s2", "s3"]
    assert len(_files(out, "slide_summaries")) == 3  # one file per slide, replaced whole
    rows = pd.concat([pd.read_parquet(p) for p in _files(out, "patch_predictions")])
    assert len(rows) == len(rows.drop_duplicates(["slide_id", "x_px", "y_px"]))
    assert rows.groupby("slide_id").size().to_dict() == dict(
        zip(summaries.slide_id, summaries.patch_count, strict=True)
    )


def _cloud_table(local_gcp, output: str, table: str) -> pd.DataFrame:
    """A table of a stream's results in BigQuery (``bq://``) or in a gs:// folder."""
    if output.startswith("bq://"):
        return bq_table(local_gcp, output.rpartition(".")[2], table)
    import gcsfs

    fs = gcsfs.GCSFileSystem()
    files = fs.glob(f"{output.removeprefix('gs://')}/{table}/*.parquet")
    return (
        pd.concat([pd.read_parquet(fs.open(f, "rb")) for f in files]) if files else pd.DataFrame()
    )


@pytest.mark.parametrize("kind", ["bq", "gs"])
def test_a_stream_into_bigquery_or_cloud_storage_keeps_each_slide_once(
    kind, tmp_path, pubsub, local_gcp, shared_data, tiny_models
):
    """Into BigQuery (a keyed merge per window) or a gs:// folder (a file per slide): a
    duplicate notification passes once, and a new generation of a slide replaces its rows."""
    from transforms.io.destinations import destination
    from transforms.io.runs import read_records

    bucket = f"landing-{kind}"
    for name in ("s1.svs", "s2.tiff", "broken.svs"):
        local_gcp.upload(shared_data / SLIDES[name], f"gs://{bucket}/{name}")
    local_gcp.upload(shared_data / SLIDES["s1.svs"], "gs://scratch-stream/keep")  # the bucket
    output = (
        f"bq://{local_gcp.project}.stream_{kind}" if kind == "bq" else "gs://scratch-stream/out"
    )
    dest = destination(output, None, "gs://scratch-stream/tmp", False, local_gcp.bigquery_endpoint)
    sub = pubsub.subscription(bucket)
    env = {**os.environ, **pubsub.env(), "STREAM_LOGS": str(tmp_path)}

    def publish(name: str, generation: int = 1) -> None:
        data, attributes = gcs_message(bucket, name, generation)
        pubsub.publish(bucket, data, **attributes)

    def summarized() -> int:
        runs = read_records(dest, "stream-test")
        return int(runs[0]["inputs_with_results"]) if runs else 0

    proc = _start(
        output, [sub], tiny_models["two"], env, "--temp_location", "gs://scratch-stream/tmp"
    )
    try:
        for name in ("s1.svs", "s2.tiff", "s1.svs", "broken.svs"):
            publish(name)
        wait_until(lambda: summarized() >= 2, 240, proc)
        publish("s1.svs", generation=2)  # the scanner wrote s1 again: its rows are replaced
        wait_until(lambda: summarized() >= 3, 120, proc)
        time.sleep(6)  # two more windows: a duplicate, were there one, would be written
    finally:
        stop_group(proc, 20)
    summaries = _cloud_table(local_gcp, output, "slide_summaries")
    assert sorted(summaries.slide_id) == ["s1", "s2"]
    rows = _cloud_table(local_gcp, output, "patch_predictions")
    assert len(rows) == len(rows.drop_duplicates(["slide_id", "x_px", "y_px"]))
    assert rows.groupby("slide_id").size().to_dict() == dict(
        zip(summaries.slide_id, summaries.patch_count, strict=True)
    )
    errors = _cloud_table(local_gcp, output, "errors")
    assert len(errors) == 1 and "broken" in errors.key.iloc[0]
    [run] = read_records(dest, "stream-test")
    assert run["status"] == "running" and run["inputs_with_results"] == 3  # s1 twice, s2
    import gcsfs

    inbox = (
        "scratch-stream/out/_inbox"
        if kind == "gs"
        else (f"scratch-stream/tmp/pathbeam_stream/{local_gcp.project}.stream_bq/_inbox")
    )
    assert {Path(p).name for p in gcsfs.GCSFileSystem().ls(inbox)} >= {"s1.done", "s2.done"}


def test_stage_names_are_the_same_from_build_to_build():
    """``--update`` replaces a running stream's stages by name: two builds of one command give
    the same names, and the stages a user would map keep theirs."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from pipelines import slide_stream
    from pipelines.options import stream_config

    args = [
        "--subscription=projects/my-lab/subscriptions/scans",
        "--subscription=projects/my-lab/subscriptions/dicom",
        "--model", "tumor=/no/where/tumor.pt2", "--output", "/no/where/out",
        "--run_id", "stream-1",
    ]  # fmt: skip

    def names() -> set[str]:
        options = PipelineOptions(args)
        options.view_as(StandardOptions).streaming = True
        cfg, stream = stream_config(options)
        pipeline = beam.Pipeline(options=options)
        slide_stream.write(slide_stream.build(pipeline, cfg, stream), cfg)
        return {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}

    first, second = names(), names()
    assert first == second
    for stage in (
        "ReadNotifications/Read/scans",
        "ReadNotifications/Read/dicom",
        "ReadNotifications/AwaitSeries",
        "ReadNotifications/FirstOfEach",
        "RecordLanded",
        "PlanPatches",
        "ReadPatches",
        "RunModel/tumor",
        "SummarizeSlides",
        "WriteResults",
        "MarkDone",
        "RecordStream",
    ):
        assert stage in first, stage
