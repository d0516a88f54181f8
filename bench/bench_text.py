"""Text pipeline benchmark on the NCBI-disease sentences with the real all-MiniLM-L6-v2.

    python -m bench.bench_text [--sentences 923]

In one process, on the same sentences, sentences/s and padding fraction of:
  * the pipeline (embedding task, run() wall time, everything included);
  * a plain loop padding every input to 128 tokens in input order (what Beam's examples do);
  * the bare model on length-sorted, dynamically padded batches: the ceiling.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load(model_dir: str):  # noqa: ANN201
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return tok, AutoModel.from_pretrained(model_dir, local_files_only=True).eval()


def fixed_padding_loop(tok, model, texts: list[str], batch: int = 32) -> tuple[float, float]:  # noqa: ANN001
    import torch

    t, real, total = time.perf_counter(), 0, 0
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tok(
                texts[i : i + batch],
                padding="max_length",
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            model(**enc)
            real += int(enc["attention_mask"].sum())
            total += enc["attention_mask"].numel()
    return len(texts) / (time.perf_counter() - t), 1 - real / total


def sorted_dynamic_ceiling(
    tok, model, texts: list[str], budget: int, max_batch: int
) -> tuple[float, float]:  # noqa: ANN001
    import torch

    from transforms.text.batching import token_budget_batches

    ids = [tok(t)["input_ids"] for t in texts]  # tokenized before timing: the model alone
    batches = token_budget_batches(ids, len, budget, max_batch, 0.1)  # as the pipeline does
    tensors = []
    for b in batches:
        longest = len(b[0])
        x = torch.zeros((len(b), longest), dtype=torch.long)
        m = torch.zeros_like(x)
        for i, seq in enumerate(b):
            x[i, : len(seq)], m[i, : len(seq)] = torch.tensor(seq), 1
        tensors.append((x, m))
    t = time.perf_counter()
    with torch.inference_mode():
        for x, m in tensors:
            model(input_ids=x, attention_mask=m)
    real = sum(int(m.sum()) for _, m in tensors)
    total = sum(m.numel() for _, m in tensors)
    return len(texts) / (time.perf_counter() - t), 1 - real / total


def pipeline(model_dir: str, texts: list[str], budget: int, max_batch: int) -> tuple[float, float]:
    import pandas as pd

    from pipelines.report import counters
    from pipelines.text_inference import run

    OUT.mkdir(parents=True, exist_ok=True)
    docs = OUT / "ncbi_sentences.csv"
    pd.DataFrame({"doc_id": [f"s{i}" for i in range(len(texts))], "text": texts}).to_csv(
        docs, index=False
    )
    t = time.monotonic()
    result = run(
        [
            "--documents",
            str(docs),
            "--model",
            f"emb={model_dir}",
            "--task",
            "emb=embedding",
            "--max_tokens_per_batch",
            str(budget),
            "--max_batch_size",
            str(max_batch),
            "--output",
            str(OUT / "text-results"),
            "--run_id",
            "bench",
            "--progress_interval_s",
            "60",
        ]
    )
    wall = time.monotonic() - t
    c = counters(result)
    return c["documents_done"] / wall, c["padded_tokens"] / (c["padded_tokens"] + c["real_tokens"])


def main() -> None:
    from tests.text_models_for_tests import minilm_dir, ncbi_sentences

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sentences", type=int, default=923)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="pass over the sentences N times")
    parser.add_argument("--max_tokens_per_batch", type=int, default=4096)
    parser.add_argument("--max_batch_size", type=int, default=32)
    args = parser.parse_args()
    texts = ncbi_sentences(SHARED)[: args.sentences] * args.repeat
    model_dir = str(minilm_dir())
    tok, model = load(model_dir)
    budget, max_batch = args.max_tokens_per_batch, args.max_batch_size
    fixed, ceiling, pipe = [], [], []
    for _ in range(args.rounds):  # interleaved: this VM's speed drifts between minutes
        fixed.append(fixed_padding_loop(tok, model, texts))
        ceiling.append(sorted_dynamic_ceiling(tok, model, texts, budget, max_batch))
        pipe.append(pipeline(model_dir, texts, budget, max_batch))
    med = {
        name: statistics.median(r[0] for r in runs)
        for name, runs in (("fixed", fixed), ("ceiling", ceiling), ("pipeline", pipe))
    }
    print(
        json.dumps(
            {
                "sentences": len(texts),
                "pipeline_sentences_per_s": round(med["pipeline"], 1),
                "pipeline_padding": round(pipe[-1][1], 4),
                "fixed_128_loop_sentences_per_s": round(med["fixed"], 1),
                "fixed_128_padding": round(fixed[-1][1], 4),
                "sorted_dynamic_ceiling_sentences_per_s": round(med["ceiling"], 1),
                "ceiling_padding": round(ceiling[-1][1], 4),
                "pipeline_over_fixed": round(med["pipeline"] / med["fixed"], 2),
                "pipeline_over_ceiling": round(med["pipeline"] / med["ceiling"], 3),
                "runs": {
                    "pipeline": [round(r[0], 1) for r in pipe],
                    "fixed": [round(r[0], 1) for r in fixed],
                    "ceiling": [round(r[0], 1) for r in ceiling],
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
