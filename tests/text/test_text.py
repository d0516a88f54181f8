"""Windows, merging and token-budget batching of the text pipeline (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.text.batching import padded_tokens, token_budget_batches
from transforms.text.entities import entities
from transforms.text.windows import WindowConfig, make_windows, window_starts

LABELS = ["O", "B-Disease", "I-Disease"]
DISEASE_WORDS = {"breast", "cancer", "ovarian", "adenomatous", "polyposis", "coli"}


@pytest.mark.parametrize(
    "n, body, stride", [(5, 10, 2), (10, 10, 2), (11, 10, 2), (97, 10, 3), (1000, 126, 32)]
)
def test_windows_cover_every_token_and_overlap_by_the_stride(n, body, stride):
    starts = window_starts(n, body, stride)
    covered = np.zeros(n, int)
    for s in starts:
        covered[s : s + body] += 1
    assert covered.min() >= 1 and starts[0] == 0 and starts[-1] + body >= n
    for a, b in zip(starts, starts[1:-1], strict=False):
        assert b - a == body - stride


def test_token_budget_batches_respect_budget_and_size_and_lose_nothing():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, 500).tolist()
    batches = token_budget_batches(list(range(500)), lambda i: lengths[i], 512, 16, 0.1)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 16 and longest * len(batch) <= 512
    sizes = [[lengths[i] for i in b] for b in batches]
    fractions = [1 - sum(size) / padded_tokens(size) for size in sizes]
    assert max(fractions) <= 0.1  # sorted, and cut where padding would pass 10%


def rule_model(window, tokenizer):
    """One-hot token probabilities: B-/I-Disease for tokens of DISEASE_WORDS, else O."""
    probs = np.zeros((len(window.ids), 3), np.float32)
    probs[:, 0] = 1
    words = {}
    for j, word_id in enumerate(window.word_ids):
        words.setdefault(word_id, []).append(j)
    previous = None
    for wid, positions in sorted(words.items()):
        start, end = window.offsets[positions[0]][0], window.offsets[positions[-1]][1]
        word = window.full_text[start:end].lower()
        if word in DISEASE_WORDS:
            label = 2 if previous == wid - 1 else 1
            for j in positions:
                probs[window.prefix + j] = np.eye(3)[label]
            previous = wid
    return probs


def test_entities_from_windows_equal_one_pass_over_a_long_document(minilm):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm, local_files_only=True)
    sentence = (
        "Germline mutations in BRCA1 cause breast cancer and ovarian cancer, while "
        "adenomatous polyposis coli is a different story entirely. "
    )
    text = sentence * 12  # ~300 tokens: far longer than a 40-token window
    doc = {"doc_id": "d", "text": text}
    windowed = make_windows(tokenizer, doc, WindowConfig(window_tokens=40, stride_tokens=8))
    single = make_windows(tokenizer, doc, WindowConfig(window_tokens=8192, stride_tokens=0))
    assert len(windowed) > 5 and len(single) == 1
    for w in windowed + single:
        w.full_text = text
        w.output = rule_model(w, tokenizer)
    label_of = LABELS.__getitem__
    found, reference = entities(windowed, label_of), entities(single, label_of)
    assert found == reference
    assert [e["text"] for e in found[:4]] == [
        "breast cancer",
        "ovarian cancer",
        "adenomatous polyposis coli",
        "breast cancer",
    ]
    assert len(found) == 12 * 3
    for e in found:
        assert text[e["start_char"] : e["end_char"]] == e["text"] and e["score"] == 1.0
