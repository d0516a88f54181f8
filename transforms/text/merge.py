"""A document's windows -> one row of its model's table: entities, labels or an embedding.

Token probabilities are taken from the window where each token sits deepest; entities come back
with character offsets into the ORIGINAL text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, PipelineError, dead_letter
from transforms.text.models import TextModelSpec
from transforms.text.windows import TextWindow


class RouteByWindows(beam.DoFn):
    """Single-window documents skip the shuffle; only windowed documents are grouped."""

    MULTI = "multi"

    def process(self, window: TextWindow) -> Iterator[Any]:
        if window.n_windows == 1:
            yield window.doc_id, [window]
        else:
            yield beam.pvalue.TaggedOutput(self.MULTI, (window.doc_id, window))


class MergeWindows(beam.DoFn):
    def __init__(self, spec: TextModelSpec, run_id: str) -> None:
        self._spec = spec
        self._run_id = run_id

    def process(self, element: tuple[str, Iterable[TextWindow]]) -> Iterator[Any]:
        doc_id, windows = element
        windows = sorted(windows, key=lambda w: w.index)
        stage = f"RunModel/{self._spec.name}"
        failed = next((w.error for w in windows if w.error), None)
        if failed or len(windows) != windows[0].n_windows:
            reason = failed or f"{len(windows)} of {windows[0].n_windows} windows came back"
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, dead_letter(stage, doc_id, PipelineError(reason), {"doc_id": doc_id})
            )
            return
        row = {
            "doc_id": doc_id,
            "model_name": self._spec.name,
            "model_version": self._spec.version,
            "n_tokens": windows[0].n_tokens,
            "n_windows": len(windows),
            "run_id": self._run_id,
        }
        task = self._spec.task
        names = windows[0].labels

        def label_of(i: int) -> str:
            return names[i] if i < len(names) else f"LABEL_{i}"

        if task == "embedding":
            total = np.sum([w.output for w in windows], axis=0)
            vector = total[:-1] / total[-1]
            vector = vector / max(np.linalg.norm(vector), 1e-12)
            row.update(embedding=vector.tolist(), dim=len(vector))
        elif task == "text-classification":
            probs = np.mean([w.output for w in windows], axis=0)
            order = np.argsort(-probs)
            labels = [{"label": label_of(int(i)), "score": float(probs[i])} for i in order]
            row.update(labels=labels, top_label=labels[0]["label"])
        else:
            row["entities"] = entities(windows, label_of)
        progress.count("documents_done")
        yield row


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
