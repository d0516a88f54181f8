"""The text pipeline against the emulators: papers in ``gs://``, entities and labels in BigQuery,
the same rows as the Parquet run, idempotent reruns and ``--skip_existing``."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.report import counters
from pipelines.text_inference import run
from tests.e2e.cli import read_errors, tiny_text_model_flags
from tests.gcp import bq_table
from tests.tables import TEXT_ENTITIES, TEXT_LABELS
from transforms.io.schemas import ERRORS

pytestmark = [pytest.mark.pipeline, pytest.mark.gcp]


def text_args(docs: str, models: dict[str, str], output: str, *extra: str) -> list[str]:
    return [
        "--documents",
        docs,
        "--doc_id_column",
        "pmid",
        *tiny_text_model_flags(models),
        "--output",
        output,
        "--temp_location",
        "gs://scratch-text/tmp",
        "--progress_interval_s",
        "60",
        *extra,
    ]


def test_text_results_in_bigquery(local_gcp, shared_data, tiny_text_models, tmp_path):
    ncbi = (shared_data / "text_ncbi_disease_devel" / "ncbi_disease_devel.jsonl").read_text()
    papers = [json.loads(line) for line in ncbi.splitlines() if line.strip()][:40]
    first, later = papers[:30], papers[30:]
    local = tmp_path / "first.jsonl"
    local.write_text(
        "\n".join(json.dumps(p) for p in first) + "\n" + json.dumps({"pmid": "e", "text": ""})
    )
    docs = local_gcp.upload(local, "gs://papers-bucket/first.jsonl")
    client = local_gcp.storage()
    if client.lookup_bucket("scratch-text") is None:
        client.create_bucket("scratch-text")

    run(text_args(docs, tiny_text_models, str(tmp_path / "parquet")))
    out = f"bq://{local_gcp.project}.papers"
    for attempt in range(3):
        run(text_args(docs, tiny_text_models, out, "--run_id", f"t{attempt}"))

    entities = bq_table(local_gcp, "papers", TEXT_ENTITIES.name)
    labels = bq_table(local_gcp, "papers", TEXT_LABELS.name)
    errors = bq_table(local_gcp, "papers", ERRORS.name)
    local_entities = pd.read_parquet(tmp_path / "parquet" / TEXT_ENTITIES.name)
    local_labels = pd.read_parquet(tmp_path / "parquet" / TEXT_LABELS.name)
    assert len(entities) == len(local_entities) == 30
    assert len(labels) == len(local_labels) == 30
    assert not entities.duplicated(subset=list(TEXT_ENTITIES.key)).any()
    assert set(entities.run_id) == {"t2"}
    mine = labels.set_index("doc_id").sort_index()
    theirs = local_labels.set_index("doc_id").sort_index()
    assert (mine.top_label == theirs.top_label).all()
    e_mine = entities.set_index("doc_id").sort_index()
    e_theirs = local_entities.set_index("doc_id").sort_index()
    for a, b in zip(e_mine.entities, e_theirs.entities, strict=True):
        assert [(x["start_char"], x["end_char"], x["label"]) for x in a] == [
            (x["start_char"], x["end_char"], x["label"]) for x in b
        ]
    assert list(errors.key) == ["first.jsonl:row 31"] and list(errors.stage) == ["ReadManifest"]

    # Ten more papers: only they are run with --skip_existing, and the tables hold the union.
    local.write_text(local.read_text() + "\n" + "\n".join(json.dumps(p) for p in later) + "\n")
    docs = local_gcp.upload(local, "gs://papers-bucket/first.jsonl")
    result = run(text_args(docs, tiny_text_models, out, "--skip_existing"))
    c = counters(result)
    assert c["skipped_existing"] == 30
    assert c["documents_tokenized"] == 2 * len(later)
    labels = bq_table(local_gcp, "papers", TEXT_LABELS.name)
    assert sorted(labels.doc_id) == sorted(p["pmid"] for p in papers)


def test_slide_manifest_from_a_bigquery_table(local_gcp, shared_data, tiny_models, tmp_path):
    from google.cloud import bigquery

    from pipelines.slide_inference import run as run_slides

    bq = local_gcp.bigquery()
    bq.create_dataset(f"{local_gcp.project}.manifests", exists_ok=True)
    table = bigquery.Table(
        f"{local_gcp.project}.manifests.slides",
        schema=[bigquery.SchemaField("slide_id", "STRING"), bigquery.SchemaField("uri", "STRING")],
    )
    bq.create_table(table, exists_ok=True)
    cmu1 = local_gcp.upload(
        shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs",
        "gs://bq-manifest-slides/cmu1.svs",
    )
    assert not bq.insert_rows_json(
        table, [{"slide_id": "cmu1", "uri": cmu1}, {"slide_id": "gone", "uri": "gs://x/y.svs"}]
    )
    out = tmp_path / "out"
    result = run_slides(
        [
            "--slides",
            f"bq://{local_gcp.project}.manifests.slides",
            "--model",
            f"two={tiny_models['two']}",
            "--patch_px",
            "64",
            "--no_heatmaps",
            "--output",
            str(out),
            "--progress_interval_s",
            "60",
        ]
    )
    assert counters(result)["slides_planned"] == 1
    summaries = pd.read_parquet(out / "slide_summaries")
    assert list(summaries.slide_id) == ["cmu1"] and summaries.patch_count[0] > 100
    assert [e["key"] for e in read_errors(out)] == ["gone"]
