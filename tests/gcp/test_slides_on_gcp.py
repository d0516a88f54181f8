"""The slide pipeline against the local GCS and BigQuery emulators: slides and manifests in
``gs://``, results in BigQuery, parity with the Parquet run, idempotent reruns, incremental runs,
range reads and transient GCS faults."""

from __future__ import annotations

import time

import gcsfs
import pandas as pd
import pytest

from localgcp.fault_proxy import FaultProxy, is_object_read
from pipelines.report import counters
from pipelines.slide_inference import run
from tests.e2e.cli import read_errors
from tests.gcp import bq_table, route_gcs_through
from tests.tables import PATCH_PREDICTIONS
from transforms.io.bigquery import BigQueryDataset, ensure_table
from transforms.io.schemas import ERRORS, SLIDE_SUMMARIES

pytestmark = [pytest.mark.pipeline, pytest.mark.gcp]

SLIDES = {
    "cmu1": "aperio_cmu1_small_region/CMU-1-Small-Region.svs",
    "ndpi": "ndpi_tritc/test3-TRITC-2-560.ndpi",
    "boxes": "generic_tiff_boxes/boxes.tiff",
    "unreadable": "negative_unreadable_svs/unreadable.svs",
}
BUCKET = "gs://slides-bucket"


@pytest.fixture(scope="module")
def gcs_slides(local_gcp, shared_data) -> dict[str, str]:
    """The real dev slides uploaded to the GCS emulator: slide_id -> gs:// URI."""
    uris = {
        slide_id: local_gcp.upload(shared_data / path, f"{BUCKET}/{path}")
        for slide_id, path in SLIDES.items()
    }
    uris["cmu1_copy"] = local_gcp.upload(shared_data / SLIDES["cmu1"], f"{BUCKET}/copy/cmu1.svs")
    return uris


def manifest(local_gcp, tmp_path, name: str, rows: dict[str, str]) -> str:
    path = tmp_path / name
    lines = ["slide_id,uri,mpp"] + [
        f"{sid},{uri},{'0.25' if sid == 'boxes' else ''}" for sid, uri in rows.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return local_gcp.upload(path, f"{BUCKET}/manifests/{name}")


def slide_args(slides: str, model: str, output: str, *extra: str, version: str = "v1") -> list[str]:
    return [
        "--slides",
        slides,
        "--model",
        f"two={model}",
        "--model_version",
        f"two={version}",
        "--patch_px",
        "64",
        "--patch_mpp",
        "0.5",
        "--output",
        output,
        "--progress_interval_s",
        "60",
        *extra,
    ]


def bq_args(dataset: str) -> list[str]:
    return [
        "--temp_location",
        "gs://scratch-bucket/tmp",
        "--artifacts",
        f"gs://scratch-bucket/artifacts/{dataset}",
    ]


def duplicate_keys(frame: pd.DataFrame, key: list[str]) -> int:
    return int(frame.duplicated(subset=key).sum())


@pytest.fixture(scope="module")
def scratch_bucket(local_gcp) -> None:
    client = local_gcp.storage()
    if client.lookup_bucket("scratch-bucket") is None:
        client.create_bucket("scratch-bucket")


PATCH_KEY = ["slide_id", "model_name", "model_version", "x_px", "y_px", "size_px", "level"]


def test_bigquery_results_match_parquet_and_reruns_leave_one_set(
    local_gcp, gcs_slides, scratch_bucket, tiny_models, tmp_path
):
    rows = {k: gcs_slides[k] for k in ("cmu1", "ndpi", "boxes", "unreadable")}
    rows["missing"] = f"{BUCKET}/no/such.svs"
    slides = manifest(local_gcp, tmp_path, "five.csv", rows)

    local_out = tmp_path / "parquet"
    run(slide_args(slides, tiny_models["two"], str(local_out)))
    for attempt in range(3):
        result = run(
            slide_args(slides, tiny_models["two"], f"bq://{local_gcp.project}.parity")
            + bq_args("parity")
            + ["--run_id", f"rerun{attempt}"]
        )
        assert counters(result)["slides_planned"] == 3

    local_predictions = pd.read_parquet(local_out / PATCH_PREDICTIONS.name)
    local_summaries = pd.read_parquet(local_out / SLIDE_SUMMARIES.name)
    predictions = bq_table(local_gcp, "parity", PATCH_PREDICTIONS.name)
    summaries = bq_table(local_gcp, "parity", SLIDE_SUMMARIES.name)
    errors = bq_table(local_gcp, "parity", ERRORS.name)

    # Three runs, one set of rows: no duplicate keys, and the last run's rows.
    assert duplicate_keys(predictions, PATCH_KEY) == 0
    assert duplicate_keys(summaries, list(SLIDE_SUMMARIES.key)) == 0
    assert duplicate_keys(errors, list(ERRORS.key)) == 0
    assert set(predictions.run_id) == set(summaries.run_id) == {"rerun2"}

    # The same rows as the Parquet run, with the same values.
    assert len(predictions) == len(local_predictions) > 100
    assert len(summaries) == len(local_summaries) == 3
    mine = predictions.sort_values(PATCH_KEY).reset_index(drop=True)
    theirs = local_predictions.sort_values(PATCH_KEY).reset_index(drop=True)
    assert (mine[PATCH_KEY] == theirs[PATCH_KEY]).all().all()
    assert (mine.label == theirs.label).all()
    for a, b in zip(mine.probs, theirs.probs, strict=True):
        assert list(a) == pytest.approx(list(b), abs=1e-6)
    s_mine = summaries.set_index("slide_id").sort_index()
    s_theirs = local_summaries.set_index("slide_id").sort_index()
    assert (s_mine.patch_count == s_theirs.patch_count).all()
    assert (s_mine.patches_planned == s_theirs.patches_planned).all()

    # Dead letters are in the errors table, with their stage.
    assert sorted(zip(errors.key, errors.stage, strict=True)) == [
        ("missing", "PlanPatches"),
        ("unreadable", "PlanPatches"),
    ]
    # Slides in = slides with results + dead letters.
    assert len(rows) == summaries.slide_id.nunique() + len(errors)

    # Heatmaps were written next to the results, and their URIs are in slide_summaries.
    fs = gcsfs.GCSFileSystem()
    for uri in summaries.heatmap_uri:
        assert uri.startswith("gs://scratch-bucket/artifacts/parity/heatmaps/")
        assert fs.size(uri) > 1000

    # Partitioned by run date, clustered by slide and model.
    meta = local_gcp.bigquery().get_table(f"{local_gcp.project}.parity.patch_predictions")
    assert meta.time_partitioning.field == "run_date"
    assert meta.clustering_fields == ["slide_id", "model_name"]


def test_skip_existing_reads_only_new_slides(
    local_gcp, gcs_slides, scratch_bucket, tiny_models, tmp_path
):
    out = f"bq://{local_gcp.project}.incremental"
    first = {k: gcs_slides[k] for k in ("cmu1", "boxes")}
    slides = manifest(local_gcp, tmp_path, "two.csv", first)
    run(slide_args(slides, tiny_models["two"], out, "--skip_existing") + bq_args("incremental"))

    grown = {**first, "ndpi": gcs_slides["ndpi"], "cmu1_copy": gcs_slides["cmu1_copy"]}
    slides = manifest(local_gcp, tmp_path, "four.csv", grown)
    result = run(
        slide_args(slides, tiny_models["two"], out, "--skip_existing") + bq_args("incremental")
    )
    c = counters(result)
    assert c["skipped_existing"] == 2
    assert c["slides_opened"] == 2 and c["slides_planned"] == 2

    summaries = bq_table(local_gcp, "incremental", SLIDE_SUMMARIES.name)
    assert sorted(summaries.slide_id) == sorted(grown)
    predictions = bq_table(local_gcp, "incremental", PATCH_PREDICTIONS.name)
    assert set(predictions.slide_id) == set(grown)
    assert duplicate_keys(predictions, PATCH_KEY) == 0

    # A new model version makes every slide new to it.
    result = run(
        slide_args(slides, tiny_models["two"], out, "--skip_existing", version="v2")
        + bq_args("incremental")
    )
    assert "skipped_existing" not in counters(result)
    summaries = bq_table(local_gcp, "incremental", SLIDE_SUMMARIES.name)
    assert sorted(summaries.model_version.value_counts().items()) == [("v1", 4), ("v2", 4)]


def test_slides_are_read_in_ranges_not_whole(local_gcp, tiny_models, tmp_path, monkeypatch):
    """Two patches of an 8192 px slide fetch a small share of its bytes: range requests, not a
    download (the real dev slides are 2-3 MB, too small for the share to mean much)."""
    from demo.synthetic_slide import make_slide, write_svs

    local = tmp_path / "big.svs"
    write_svs(str(local), make_slide(8192, 8192, seed=3).rgb, mpp=0.5)
    uri = local_gcp.upload(local, f"{BUCKET}/big/big.svs")
    patches = tmp_path / "patches.csv"
    patches.write_text("slide_id,x_px,y_px,size_px\nbig,512,512,128\nbig,4096,4096,128\n")
    slides = manifest(local_gcp, tmp_path, "big.csv", {"big": uri})
    with FaultProxy(local_gcp.gcs_endpoint) as proxy:
        route_gcs_through(proxy, monkeypatch)
        result = run(
            slide_args(slides, tiny_models["two"], str(tmp_path / "out"), "--no_heatmaps")
            + ["--patches", str(patches)]
        )
    gcsfs.GCSFileSystem.clear_instance_cache()
    assert counters(result)["patches_inferred"] == 2
    size = local.stat().st_size
    fetched = proxy.bytes_by_object["big/big.svs"]
    assert 0 < fetched < 0.2 * size, (fetched, size, sorted(proxy.reads, key=lambda r: -r[2])[:4])
    assert proxy.range_requests > 0


def test_transient_gcs_faults_are_retried_and_nothing_is_lost(
    local_gcp, gcs_slides, tiny_models, tmp_path, monkeypatch
):
    """Every third object read fails (a 503, or a dropped connection): gcsfs retries them."""
    rows = {k: gcs_slides[k] for k in ("cmu1", "ndpi", "boxes")}
    slides = manifest(local_gcp, tmp_path, "three.csv", rows)
    clean = run(slide_args(slides, tiny_models["two"], str(tmp_path / "clean"), "--no_heatmaps"))
    with FaultProxy(local_gcp.gcs_endpoint, fail_every=3) as proxy:
        route_gcs_through(proxy, monkeypatch)
        faulty = run(
            slide_args(slides, tiny_models["two"], str(tmp_path / "faulty"), "--no_heatmaps")
        )
    gcsfs.GCSFileSystem.clear_instance_cache()
    assert proxy.faults["503"] >= 3 and proxy.faults["drop"] >= 3, proxy.faults
    assert read_errors(tmp_path / "faulty") == []
    before = pd.read_parquet(tmp_path / "clean" / PATCH_PREDICTIONS.name)
    after = pd.read_parquet(tmp_path / "faulty" / PATCH_PREDICTIONS.name)
    assert len(after) == len(before) > 100
    assert counters(faulty)["patches_inferred"] == counters(clean)["patches_inferred"]


def test_parquet_results_in_gcs_and_skip_existing_reads_them(
    local_gcp, gcs_slides, scratch_bucket, tiny_models, tmp_path
):
    slides = manifest(local_gcp, tmp_path, "gcs-out.csv", {"cmu1": gcs_slides["cmu1"]})
    out = "gs://scratch-bucket/results/parquet"
    first = run(slide_args(slides, tiny_models["two"], out, "--skip_existing"))
    again = run(slide_args(slides, tiny_models["two"], out, "--skip_existing"))
    assert counters(first)["slides_planned"] == 1
    assert counters(again)["skipped_existing"] == 1 and "slides_opened" not in counters(again)

    fs = gcsfs.GCSFileSystem()
    with fs.open(fs.glob(f"{out}/slide_summaries/*.parquet")[0], "rb") as f:
        summary = pd.read_parquet(f)
    assert list(summary.slide_id) == ["cmu1"]
    assert summary.heatmap_uri[0].startswith(f"{out}/heatmaps/") and fs.size(summary.heatmap_uri[0])


def test_hung_reads_time_out_and_are_retried(
    local_gcp, gcs_slides, tiny_models, tmp_path, monkeypatch
):
    """Every fourth object read hangs for 20 s: with a 2 s request timeout each is retried,
    and the run has the same results as a clean one, no dead letters."""
    monkeypatch.setenv("PATHBEAM_IO_TIMEOUT_S", "2")
    rows = {k: gcs_slides[k] for k in ("cmu1", "boxes")}
    slides = manifest(local_gcp, tmp_path, "hung.csv", rows)
    clean = run(slide_args(slides, tiny_models["two"], str(tmp_path / "clean"), "--no_heatmaps"))
    with FaultProxy(local_gcp.gcs_endpoint, fail_every=4, stall_s=20) as proxy:
        route_gcs_through(proxy, monkeypatch)
        started = time.monotonic()
        hung = run(slide_args(slides, tiny_models["two"], str(tmp_path / "hung"), "--no_heatmaps"))
        elapsed = time.monotonic() - started
    gcsfs.GCSFileSystem.clear_instance_cache()
    assert proxy.faults["stall"] >= 2, proxy.faults
    assert counters(hung)["io_retries"] >= 1
    assert counters(hung)["patches_inferred"] == counters(clean)["patches_inferred"] > 100
    assert read_errors(tmp_path / "hung") == []
    assert elapsed < 120


def run_with_faulty_boxes(
    local_gcp, gcs_slides, tiny_models, tmp_path, monkeypatch, name: str, **fault
) -> tuple:
    """Run cmu1 and boxes from GCS, every read of boxes' bytes faulty (``fault``: FaultProxy's
    ``stall_s`` or ``misbehave``); the result, the seconds it took, the proxy."""
    rows = {k: gcs_slides[k] for k in ("cmu1", "boxes")}
    slides = manifest(local_gcp, tmp_path, name, rows)

    def boxes_reads(method: str, path: str) -> bool:
        return is_object_read(method, path) and "boxes.tiff" in path

    with FaultProxy(local_gcp.gcs_endpoint, fail_every=1, fault_on=boxes_reads, **fault) as proxy:
        route_gcs_through(proxy, monkeypatch)
        started = time.monotonic()
        result = run(slide_args(slides, tiny_models["two"], str(tmp_path / "out"), "--no_heatmaps"))
        elapsed = time.monotonic() - started
    gcsfs.GCSFileSystem.clear_instance_cache()
    return result, elapsed, proxy


def test_a_slide_that_always_hangs_becomes_a_dead_letter(
    local_gcp, gcs_slides, tiny_models, tmp_path, monkeypatch
):
    monkeypatch.setenv("PATHBEAM_IO_TIMEOUT_S", "1")
    result, elapsed, _ = run_with_faulty_boxes(
        local_gcp, gcs_slides, tiny_models, tmp_path, monkeypatch, "stuck.csv", stall_s=30
    )
    errors = read_errors(tmp_path / "out")
    assert [(e["key"], e["stage"], e["error_type"]) for e in errors] == [
        ("boxes", "PlanPatches", "RemoteIOError")
    ]
    assert counters(result)["slides_planned"] == 1  # cmu1 still has its results
    assert elapsed < 150


def test_staging_tables_a_dead_run_left_are_dropped_once_stale(local_gcp):
    """A run that died between its load and its merge leaves ``_staging_*``; a later launch
    drops it once it is older than any live run's, and never touches result tables."""
    import datetime as dt

    from google.cloud import bigquery

    from transforms.io.bigquery import BigQueryDataset, ensure_table, prepare_dataset, staging_table

    target = BigQueryDataset(local_gcp.project, "stale", local_gcp.bigquery_endpoint)
    bq = local_gcp.bigquery()
    ensure_table(bq, target, PATCH_PREDICTIONS)
    left = staging_table(PATCH_PREDICTIONS, "20261101T000000Z-dead")
    field = [bigquery.SchemaField("slide_id", "STRING")]
    bq.create_table(bigquery.Table(target.table_id(left), schema=field))

    assert prepare_dataset(target) == []  # a fresh one may be a live run's
    assert prepare_dataset(target, stale_after=dt.timedelta(0)) == [left]
    names = {t.table_id for t in bq.list_tables(f"{target.project}.{target.dataset}")}
    assert names == {PATCH_PREDICTIONS.name}
    gone = BigQueryDataset(local_gcp.project, "never_made", local_gcp.bigquery_endpoint)
    assert prepare_dataset(gone, stale_after=dt.timedelta(0)) == []  # and now it exists
    assert bq.get_dataset(f"{gone.project}.{gone.dataset}").dataset_id == "never_made"


def test_embedding_and_segmentation_tables_round_trip_through_bigquery(
    local_gcp, gcs_slides, scratch_bucket, tiny_models, tmp_path
):
    """An encoder, a segmentation net and a classifier in one job, to Parquet and twice to
    BigQuery: the BigQuery rows equal the Parquet rows (embeddings as ARRAY<FLOAT64>), reruns
    leave one set, and --skip_existing is keyed by each model's own results."""
    from tests.models_for_tests import SpatialOutput, TinyEncoder, export_pt2
    from tests.tables import PATCH_EMBEDDINGS, PATCH_SEGMENTATIONS, SLIDE_EMBEDDINGS

    slides = manifest(local_gcp, tmp_path, "kinds.csv", {"cmu1": gcs_slides["cmu1"]})
    models = [
        *("--model", f"enc={export_pt2(TinyEncoder().eval(), str(tmp_path / 'enc.pt2'))}"),
        *("--model", f"seg={export_pt2(SpatialOutput().eval(), str(tmp_path / 'seg.pt2'))}"),
        *("--model_output", "enc=embedding", "--model_output", "seg=segmentation"),
    ]
    local_out = tmp_path / "parquet"
    run(slide_args(slides, tiny_models["two"], str(local_out), *models))
    out = f"bq://{local_gcp.project}.kinds"
    for attempt in range(2):
        run(
            slide_args(slides, tiny_models["two"], out, *models)
            + bq_args("kinds")
            + ["--run_id", f"kinds{attempt}"]
        )
    for schema in (PATCH_EMBEDDINGS, PATCH_SEGMENTATIONS, PATCH_PREDICTIONS):
        theirs = pd.read_parquet(local_out / schema.name).sort_values(PATCH_KEY)
        mine = bq_table(local_gcp, "kinds", schema.name).sort_values(PATCH_KEY)
        assert duplicate_keys(mine, PATCH_KEY) == 0 and set(mine.run_id) == {"kinds1"}
        assert len(mine) == len(theirs) > 100, schema.name
        column = {"patch_embeddings": "embedding", "patch_segmentations": "class_fractions"}
        values = column.get(schema.name, "probs")
        for a, b in zip(mine[values], theirs[values], strict=True):
            assert list(a) == pytest.approx(list(b), abs=1e-6)
    meta = local_gcp.bigquery().get_table(f"{local_gcp.project}.kinds.patch_embeddings")
    field = next(f for f in meta.schema if f.name == "embedding")
    assert (field.field_type, field.mode) in {("FLOAT", "REPEATED"), ("FLOAT64", "REPEATED")}
    slide_embedding = bq_table(local_gcp, "kinds", SLIDE_EMBEDDINGS.name)
    assert len(slide_embedding) == 1 and len(slide_embedding.embedding[0]) == 16
    summaries = bq_table(local_gcp, "kinds", SLIDE_SUMMARIES.name).set_index("model_name")
    assert len(summaries) == 3 and len(summaries.loc["seg"].class_area_mm2) == 2

    # --skip_existing per model: a new version of the encoder alone reruns the slide for it only.
    result = run(
        slide_args(slides, tiny_models["two"], out, *models, "--skip_existing")
        + ["--model_version", "enc=v2"]
        + bq_args("kinds")
    )
    assert counters(result)["slides_planned"] == 1
    embeddings = bq_table(local_gcp, "kinds", PATCH_EMBEDDINGS.name)
    assert sorted(embeddings.model_version.unique()) == ["unversioned", "v2"]
    # Every run recorded itself once, in the same dataset.
    runs = bq_table(local_gcp, "kinds", "runs")
    assert runs.run_id.is_unique and {"kinds0", "kinds1"} <= set(runs.run_id)
    assert set(runs.status) == {"succeeded"} and len(runs) == 3


def test_a_table_an_older_version_made_gets_the_new_columns(local_gcp):
    """slide_summaries made before class_area_mm2 existed: ensure_table adds the columns it
    lacks in place, keeping the old ones."""
    from google.cloud import bigquery

    from transforms.io.bigquery import BigQueryDataset, ensure_table

    bq = local_gcp.bigquery()
    target = BigQueryDataset(local_gcp.project, "evolving")
    bq.create_dataset(f"{local_gcp.project}.evolving", exists_ok=True)
    old = [
        bigquery.SchemaField("slide_id", "STRING", "REQUIRED"),
        bigquery.SchemaField("run_date", "DATE", "REQUIRED"),
    ]
    bq.create_table(bigquery.Table(target.table_id("slide_summaries"), schema=old))
    ensure_table(bq, target, SLIDE_SUMMARIES)
    names = [f.name for f in bq.get_table(target.table_id("slide_summaries")).schema]
    assert names[:2] == ["slide_id", "run_date"]
    assert {"class_area_mm2", "tissue_method", "heatmap_uri"} <= set(names)
    assert len(names) == len(SLIDE_SUMMARIES.columns)


def test_runs_rows_in_bigquery_are_one_per_run_id(local_gcp, scratch_bucket, tmp_path):
    """A run recorded twice under one run_id (a rerun, or submitted then succeeded) leaves one
    row in BigQuery, the last one written; and the runs command reads it back."""
    import datetime as dt

    from pipelines.runs import main
    from transforms.io.destinations import destination
    from transforms.io.runs import RunInfo, read_records, record, write_record

    dest = destination(f"bq://{local_gcp.project}.records", None, "gs://scratch-bucket/t", False)
    info = RunInfo("same-run", "slides", dt.datetime.now(dt.UTC), (("output", "bq://x"),), "r")
    write_record(dest, record(info, "submitted"))
    write_record(dest, record(info, "succeeded", finished_at=dt.datetime.now(dt.UTC)))
    rows = bq_table(local_gcp, "records", "runs")
    assert list(rows.run_id) == ["same-run"] and list(rows.status) == ["succeeded"]
    [again] = read_records(dest, "same-run")
    assert again["status"] == "succeeded" and again["flags"] == [
        {"key": "output", "value": "bq://x"}
    ]
    assert main(["--output", f"bq://{local_gcp.project}.records"]) == 0


@pytest.mark.parametrize("misbehave", ["trickle", "endless"])
def test_a_trickling_or_endless_object_is_a_dead_letter_naming_the_limit(
    local_gcp, gcs_slides, tiny_models, tmp_path, monkeypatch, misbehave
):
    """A store that answers a slide's reads 200 and then a byte every half second, or a body
    without end: each request is bounded in total time (``PATHBEAM_IO_TIMEOUT_S``) and in size
    (what its range can hold), so that slide is a dead letter naming the limit, quickly, and the
    other slide has its results."""
    monkeypatch.setenv("PATHBEAM_IO_TIMEOUT_S", "2")
    result, elapsed, proxy = run_with_faulty_boxes(
        local_gcp, gcs_slides, tiny_models, tmp_path, monkeypatch, "m.csv", misbehave=misbehave
    )
    assert proxy.faults[misbehave] >= 1
    [error] = read_errors(tmp_path / "out")
    kind = {"trickle": "RemoteIOError", "endless": "ResponseTooLarge"}[misbehave]
    assert (error["key"], error["error_type"]) == ("boxes", kind), error
    if misbehave == "trickle":
        assert "PATHBEAM_IO_TIMEOUT_S=2" in error["message"], error["message"]
    else:
        assert "more than what was asked for" in error["message"], error["message"]
    assert counters(result)["slides_planned"] == 1  # cmu1 still has its results
    assert elapsed < 120


@pytest.mark.parametrize("misbehave", ["trickle", "endless"])
def test_a_trickling_or_endless_bigquery_answer_fails_within_the_deadline(
    local_gcp, tmp_path, monkeypatch, misbehave
):
    """google-cloud-bigquery's timeouts bound each socket read, so an answer a byte at a time
    held a key query (``--skip_existing``) as long as the server liked. Every BigQuery response
    is now read within ``PATHBEAM_IO_DEADLINE_S`` and a size cap, and the error names them."""
    from transforms.core.errors import RemoteIOError
    from transforms.io import bigquery as bigquery_io

    target = BigQueryDataset(local_gcp.project, "keys", local_gcp.bigquery_endpoint)
    ensure_table(local_gcp.bigquery(), target, SLIDE_SUMMARIES)
    monkeypatch.setenv("PATHBEAM_IO_DEADLINE_S", "2")
    monkeypatch.setattr(bigquery_io, "MAX_RESPONSE_BYTES", 1 << 20)

    def queries(method: str, path: str) -> bool:
        return "/queries" in path or "/jobs" in path

    with FaultProxy(
        local_gcp.bigquery_endpoint, fail_every=1, fault_on=queries, misbehave=misbehave
    ) as proxy:
        through = BigQueryDataset(local_gcp.project, "keys", proxy.endpoint)
        started = time.monotonic()
        with pytest.raises(RemoteIOError) as failure:
            bigquery_io.query_keys(through, SLIDE_SUMMARIES, ("slide_id",))
        elapsed = time.monotonic() - started
    assert proxy.faults[misbehave] >= 1
    expected = "PATHBEAM_IO_DEADLINE_S=2" if misbehave == "trickle" else "more than what was"
    assert expected in str(failure.value), failure.value
    assert elapsed < 60
    assert bigquery_io.query_keys(target, SLIDE_SUMMARIES, ("slide_id",)) == set()
