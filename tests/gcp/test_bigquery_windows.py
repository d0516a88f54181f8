"""A stream's window merge into BigQuery, against the emulators: a window merged twice (a retried
bundle) or a slide's rows merged again in a later window (a redelivery, a restart) leave one set
of rows per key; nothing of the merge (staging table, load file) stays behind, even when the load
fails."""

from __future__ import annotations

import datetime as dt

import gcsfs
import pytest

from tests.gcp import bq_table
from transforms.io.bigquery import STAGING_PREFIX, BigQueryDataset
from transforms.io.bigquery_windows import MergeWindow, stream_temp
from transforms.io.keyed_writes import key_of
from transforms.io.schemas import ERRORS, SLIDE_SUMMARIES

pytestmark = pytest.mark.gcp

TEMP = "gs://merge-scratch/tmp"


@pytest.fixture
def target(local_gcp) -> BigQueryDataset:
    client = local_gcp.storage()
    if client.lookup_bucket("merge-scratch") is None:
        client.create_bucket("merge-scratch")
    return BigQueryDataset(local_gcp.project, "windows", local_gcp.bigquery_endpoint)


def _summary(slide: str, patches: int, run_id: str) -> dict:
    return {
        "slide_id": slide, "model_name": "two", "model_version": "v1", "uri": f"gs://b/{slide}",
        "width_px": 100, "height_px": 80, "patches_planned": patches, "patch_count": patches,
        "run_id": run_id, "run_date": dt.date(2026, 12, 3),
    }  # fmt: skip


def _merge(target: BigQueryDataset, table, rows: list[dict], run_id: str) -> list:
    merge = MergeWindow(target, table, run_id, TEMP, key_of)
    merge.setup()
    return list(merge.process((None, rows)))


def _leftovers(local_gcp, target: BigQueryDataset) -> list[str]:
    tables = [t.table_id for t in local_gcp.bigquery().list_tables(target.dataset)]
    files = gcsfs.GCSFileSystem().find(stream_temp(TEMP).removeprefix("gs://"))
    return [t for t in tables if t.startswith(STAGING_PREFIX)] + [
        f for f in files if "inbox" not in f
    ]


def test_a_window_merged_twice_or_a_slide_merged_again_leaves_one_set_of_rows(local_gcp, target):
    first = [_summary("a", 5, "run-1"), _summary("b", 7, "run-1")]
    assert _merge(target, SLIDE_SUMMARIES, first, "run-1") == [
        ("a", "slide_summaries"),
        ("b", "slide_summaries"),
    ]
    _merge(target, SLIDE_SUMMARIES, first, "run-1")  # the same window again: a retried bundle
    _merge(target, SLIDE_SUMMARIES, [_summary("a", 6, "run-2")], "run-2")  # a restart, later
    rows = bq_table(local_gcp, target.dataset, "slide_summaries").sort_values("slide_id")
    assert list(rows.slide_id) == ["a", "b"]
    assert list(rows.patch_count) == [6, 7] and list(rows.run_id) == ["run-2", "run-1"]
    assert _leftovers(local_gcp, target) == []


def test_dead_letters_merge_by_stage_and_key_and_name_their_slide(local_gcp, target):
    error = {"stage": "ReadPatches", "key": "a:unit-3", "error_type": "SlideError",
             "message": "bad tile", "input": '{"slide_id": "a"}', "run_id": "r",
             "run_date": dt.date(2026, 12, 3)}  # fmt: skip
    assert _merge(target, ERRORS, [error], "r") == [("a", "errors")]
    _merge(target, ERRORS, [error], "r")
    assert len(bq_table(local_gcp, target.dataset, "errors")) == 1


def test_a_failed_load_leaves_no_staging_table_nor_file(local_gcp, target):
    bad = {**_summary("c", 1, "r"), "width_px": "not a number"}
    with pytest.raises(Exception, match="(?i)width_px|invalid|parse|convert"):
        _merge(target, SLIDE_SUMMARIES, [bad], "r")
    assert _leftovers(local_gcp, target) == []


def test_a_workers_first_merge_drops_staging_tables_a_killed_worker_left(
    local_gcp, target, monkeypatch
):
    """A worker killed between its load and its merge leaves a staging table; the next worker's
    first merge drops those past the age limit (a week; zero here, so that the test need not
    wait one)."""
    import transforms.io.bigquery as bigquery

    prepare = bigquery.prepare_dataset
    monkeypatch.setattr(
        bigquery, "prepare_dataset", lambda t: prepare(t, stale_after=dt.timedelta(0))
    )
    bq = local_gcp.bigquery()
    bq.create_dataset(f"{target.project}.{target.dataset}", exists_ok=True)
    left = f"{STAGING_PREFIX}slide_summaries_killed_0a1b2c"
    bq.query(f"CREATE TABLE {target.sql_name(left)} AS SELECT 1 AS x").result()
    _merge(target, SLIDE_SUMMARIES, [_summary("d", 2, "r")], "r")
    assert _leftovers(local_gcp, target) == []
