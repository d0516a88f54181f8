"""Entity spans from a document's token probabilities, with offsets into the original text.

Token probabilities are taken from the window where each token sits deepest; words are
aggregated "first" and B-/I- tags grouped, like the transformers token-classification pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transforms.text.windows import TextWindow


def token_probs(windows: Sequence[TextWindow]) -> np.ndarray:
    """Document-level token probabilities: each token from the window where it sits deepest."""
    n = windows[0].n_tokens
    probs = np.zeros((n, windows[0].output.shape[1]), np.float32)
    depth = np.full(n, -1)
    for w in windows:
        body = w.output[w.prefix : w.prefix + len(w.offsets)]
        for j in range(len(body)):
            t = w.token_start + j
            d = min(j, len(body) - 1 - j)
            if d > depth[t]:
                depth[t], probs[t] = d, body[j]
    return probs


def entities(windows: Sequence[TextWindow], label_of: Any) -> list[dict[str, Any]]:
    """Entity spans with word-level "first" aggregation and B-/I- grouping, like the transformers
    token-classification pipeline; ``start``/``end`` index the original text."""
    text = windows[0].text or ""
    probs = token_probs(windows)
    offsets: list[tuple[int, int]] = [(0, 0)] * windows[0].n_tokens
    words = [-1] * windows[0].n_tokens
    for w in windows:
        for j, (o, wid) in enumerate(zip(w.offsets, w.word_ids, strict=True)):
            offsets[w.token_start + j], words[w.token_start + j] = o, wid
    spans: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for t in range(len(words)):
        if t > 0 and words[t] == words[t - 1] and words[t] != -1:
            if current is not None:  # later sub-tokens of a word extend its entity
                current["end"] = offsets[t][1]
            continue
        label = label_of(int(np.argmax(probs[t])))
        prefix, _, kind = label.rpartition("-") if "-" in label else ("I", "", label)
        if label == "O" or kind == "O":
            current = None
            continue
        if current is None or prefix == "B" or current["label"] != kind:
            current = {"label": kind, "scores": [], "start": offsets[t][0], "end": offsets[t][1]}
            spans.append(current)
        current["scores"].append(float(probs[t].max()))
        current["end"] = offsets[t][1]
    return [
        {
            "label": s["label"],
            "score": float(np.mean(s["scores"])),
            "start_char": s["start"],
            "end_char": s["end"],
            "text": text[s["start"] : s["end"]],
        }
        for s in spans
    ]
