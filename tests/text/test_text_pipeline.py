"""Text pipeline on real sentences with the real MiniLM: exact embeddings, bounded padding."""

from __future__ import annotations

import datetime as dt
import json

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.options import TextJobConfig
from pipelines.report import counters
from pipelines.text_inference import build, write
from tests.text_models_for_tests import ncbi_sentences
from transforms.io.destinations import RunStamp, destination
from transforms.text.batching import TokenBatchingConfig
from transforms.text.models import TextModelSpec
from transforms.text.windows import WindowConfig

pytestmark = pytest.mark.pipeline


def run_text_job(cfg: TextJobConfig):
    pipeline = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    write(build(pipeline, cfg), cfg)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def direct_embeddings(model_dir: str, texts: list[str]) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    out = []
    with torch.inference_mode():
        for text in texts:  # one at a time: no padding at all
            enc = tokenizer(text, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            vector = hidden.mean(dim=0)
            out.append((vector / vector.norm()).numpy())
    return np.stack(out)


@pytest.mark.parametrize("max_tokens, max_batch, buffer", [(8192, 64, 2048), (96, 3, 7)])
def test_embeddings_equal_a_direct_call_whatever_the_batching(
    tmp_path, shared_data, minilm, max_tokens, max_batch, buffer
):
    texts = ncbi_sentences(shared_data)[:60]
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(json.dumps({"doc_id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    cfg = TextJobConfig(
        documents=str(docs),
        columns={},
        models=(TextModelSpec("emb", minilm, task="embedding"),),
        windows=WindowConfig(512, 64),
        batching=TokenBatchingConfig(max_tokens, max_batch, buffer),
        destination=destination(str(tmp_path / "out"), None, None, None, False),
        skip_existing=False,
        run=RunStamp("emb", dt.date(2026, 1, 1)),
    )
    result = run_text_job(cfg)
    rows = pd.read_parquet(tmp_path / "out" / "text_embeddings").set_index("doc_id")
    got = np.stack([rows.loc[f"s{i}"].embedding for i in range(len(texts))])
    np.testing.assert_allclose(got, direct_embeddings(minilm, texts), atol=1e-5, rtol=0)
    assert set(rows.dim) == {384} and set(rows.n_windows) == {1}
    c = counters(result)
    assert c["documents_done"] == len(texts) and c["real_tokens"] == rows.n_tokens.sum() + 2 * 60


def test_padding_stays_under_ten_percent_on_ncbi_sentences(tmp_path, shared_data, tiny_text_models):
    texts = ncbi_sentences(shared_data)
    docs = tmp_path / "docs.csv"
    pd.DataFrame({"doc_id": [f"s{i}" for i in range(len(texts))], "text": texts}).to_csv(
        docs, index=False
    )
    cfg = TextJobConfig(
        documents=str(docs),
        columns={},
        models=(TextModelSpec("ner", tiny_text_models["ner"], task="token-classification"),),
        windows=WindowConfig(512, 64),
        batching=TokenBatchingConfig(2048, 64, 2048),
        destination=destination(str(tmp_path / "out"), None, None, None, False),
        skip_existing=False,
        run=RunStamp("pad", dt.date(2026, 1, 1)),
    )
    result = run_text_job(cfg)
    c = counters(result)
    assert c["documents_done"] == len(texts) == 923
    assert c["padded_tokens"] / (c["padded_tokens"] + c["real_tokens"]) <= 0.10
    query = result.metrics().query()
    tokens = next(d for d in query["distributions"] if d.key.metric.name == "tokens_per_batch")
    assert tokens.committed.max <= 2048  # every batch within the token budget
    entities = pd.read_parquet(tmp_path / "out" / "text_entities").set_index("doc_id")
    for i, text in enumerate(texts):
        for e in entities.loc[f"s{i}"].entities:
            assert text[e["start_char"] : e["end_char"]] == e["text"]


def test_text_models_in_bf16_pass_the_guard_and_keep_their_results(
    tmp_path, shared_data, minilm, tiny_text_models
):
    """--precision NAME=bf16 on the text pipeline: the guard compares the first windows in both
    precisions, records its figures, and the bf16 results stay close to fp32's."""
    from pipelines.text_inference import run
    from transforms.io.destinations import destination as dest_of
    from transforms.io.runs import read_records

    texts = ncbi_sentences(shared_data)[:80]
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(json.dumps({"doc_id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    models = ["--model", f"emb={minilm}", "--task", "emb=embedding"]
    models += ["--model", f"ner={tiny_text_models['ner']}", "--task", "ner=token-classification"]
    out = {}
    for precision in ("fp32", "bf16"):
        run(
            ["--documents", str(docs), *models, "--run_id", precision]
            + ["--precision", f"emb={precision}", "--precision", f"ner={precision}"]
            + ["--output", str(tmp_path / precision)]
        )
        out[precision] = tmp_path / precision
    [row] = read_records(dest_of(str(out["bf16"]), None, None, False), "bf16")
    guard = {g["model"]: g for g in row["precision_guard"]}
    assert set(guard) == {"emb", "ner"} and all(g["passed"] for g in guard.values())
    assert guard["emb"]["min_cosine"] >= 0.999 and guard["emb"]["checked"] >= 32
    assert guard["ner"]["label_agreement"] >= 0.99 and guard["ner"]["max_prob_diff"] <= 0.02
    [fp32_row] = read_records(dest_of(str(out["fp32"]), None, None, False), "fp32")
    assert fp32_row["precision_guard"] == []  # nothing to check in fp32
    assert {m["precision"] for m in row["models"]} == {"bf16"}
    assert {m["precision"] for m in fp32_row["models"]} == {"fp32"}

    def vectors(folder):
        rows = pd.read_parquet(folder / "text_embeddings").sort_values("doc_id")
        return np.stack(rows.embedding.to_numpy())

    a, b = vectors(out["bf16"]), vectors(out["fp32"])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert len(a) == len(texts) and cos.min() > 0.995 and not np.array_equal(a, b)
