"""The text pipeline through its CLI: NCBI-disease abstracts plus bad rows, three models."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from tests.e2e.cli import read_errors, run_module, tiny_text_model_flags

pytestmark = pytest.mark.e2e


def run_text_cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("pipelines.text_inference", *args)


def test_ncbi_abstracts_and_bad_rows(tmp_path, shared_data, minilm, tiny_text_models):
    ncbi = (shared_data / "text_ncbi_disease_devel" / "ncbi_disease_devel.jsonl").read_bytes()
    abstracts = [json.loads(line) for line in ncbi.decode().splitlines() if line.strip()]
    bad = [
        json.dumps({"pmid": "empty", "text": ""}).encode(),
        json.dumps({"pmid": "blank", "text": " \n\t "}).encode(),
        json.dumps({"text": "a document without an id"}).encode(),
        b'{"pmid": "latin1", "text": "caf\xe9 au lait spots"}',  # not UTF-8
        json.dumps({"pmid": abstracts[0]["pmid"], "text": "a second row, same id"}).encode(),
        b"{not json",
    ]
    docs = tmp_path / "papers.jsonl"
    docs.write_bytes(ncbi.rstrip(b"\n") + b"\n" + b"\n".join(bad) + b"\n")
    out = tmp_path / "out"
    proc = run_text_cli(
        "--documents",
        str(docs),
        "--doc_id_column",
        "pmid",
        "--model",
        f"emb={minilm}",
        "--task",
        "emb=embedding",
        "--model_version",
        "emb=l6-v2",
        *tiny_text_model_flags(tiny_text_models),
        "--max_tokens_per_batch",
        "4096",
        "--output",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    embeddings = pd.read_parquet(out / "text_embeddings")
    entities = pd.read_parquet(out / "text_entities")
    labels = pd.read_parquet(out / "text_labels")
    ids = {a["pmid"] for a in abstracts}
    for table in (embeddings, entities, labels):
        assert set(table.doc_id) == ids and len(table) == 100
    assert set(embeddings.model_version) == {"l6-v2"} and set(embeddings.dim) == {384}
    assert (embeddings.n_windows > 1).any()  # abstracts longer than 128 tokens were windowed
    norms = embeddings.embedding.map(lambda v: float(sum(x * x for x in v)) ** 0.5)
    assert norms.between(1 - 1e-6, 1 + 1e-6).all()
    text_of = {a["pmid"]: a["text"] for a in abstracts}
    for row in entities.itertuples():
        for e in row.entities:
            assert text_of[row.doc_id][e["start_char"] : e["end_char"]] == e["text"]
    assert labels.labels.map(len).eq(2).all()
    assert set(labels.top_label) <= {"negative", "positive"}

    errors = read_errors(out)
    assert all(e["stage"] == "ReadManifest" for e in errors)
    keys = sorted(e["key"] for e in errors)
    assert len(errors) == 6  # documents in = 100 results per model + 6 dead letters
    assert keys.count(abstracts[0]["pmid"]) == 1  # the duplicate
    messages = " | ".join(e["message"] for e in errors)
    for reason in (
        "empty or only whitespace",
        "'doc_id' is missing",
        "not valid UTF-8",
        "duplicate doc_id",
        "not valid JSON",
    ):
        assert reason in messages
    assert "documents: 106 in, 100 with results, 6 failed, 0 skipped as done already" in proc.stdout
    assert "dead letters: 6 (ReadManifest 6)" in proc.stdout
    assert "results: 300 from 3 model(s)" in proc.stdout

    # The run's record and report: documents in, tokens per second, labels counted.
    [run] = pd.read_parquet(out / "runs").to_dict("records")
    assert (run["status"], run["pipeline"], run["units"]) == ("succeeded", "text", "tokens")
    assert (run["inputs"], run["inputs_with_results"], run["inputs_failed"]) == (106, 100, 6)
    assert run["units_done"] == int(embeddings.n_tokens.sum() * 3) and run["units_per_s"] > 0
    page = next((out / "report").glob("*/index.html")).read_text()
    assert "report:" in proc.stdout and "index.html" in proc.stdout
    assert all(doc_id in page for doc_id in list(ids)[:20])
    assert "positive" in page or "negative" in page  # labels counted
    assert "ReadManifest" in page and "<td class=num>6</td>" in page  # dead letters


def test_a_long_document_is_windowed_never_truncated(tmp_path, tiny_text_models):
    text = ("Familial adenomatous polyposis is an autosomal dominant disease. " * 16000)[:1_000_000]
    docs = tmp_path / "long.jsonl"
    docs.write_text(
        json.dumps({"doc_id": "megabyte", "text": text})
        + "\n"
        + json.dumps({"doc_id": "short", "text": "A short note."})
        + "\n"
    )
    out = tmp_path / "out"
    proc = run_text_cli(
        "--documents",
        str(docs),
        "--model",
        f"ner={tiny_text_models['ner']}",
        "--task",
        "ner=token-classification",
        "--window_tokens",
        "512",
        "--stride_tokens",
        "64",
        "--max_tokens_per_batch",
        "8192",
        "--output",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_parquet(out / "text_entities").set_index("doc_id")
    big = rows.loc["megabyte"]
    assert big.n_tokens > 150_000 and big.n_windows == -(-(big.n_tokens - 510) // 446) + 1
    assert all(text[e["start_char"] : e["end_char"]] == e["text"] for e in big.entities)
    assert max((e["end_char"] for e in big.entities), default=0) <= len(text)
    assert rows.loc["short"].n_windows == 1
