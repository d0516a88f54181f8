"""Documents -> token windows -> token-budget batches -> model -> per-document rows.

Long documents are never truncated: they are cut into overlapping windows of ``window_tokens``
(special tokens included) that overlap by ``stride_tokens``; the windows of a document meet again
in ``MergeWindows``. Entities come back with character offsets into the ORIGINAL text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.utils.shared import Shared

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, ConfigError, PipelineError, dead_letter
from transforms.models.patch_inference import SplittingRunner
from transforms.text.batching import SortAndBatchByTokens, TokenBatchingConfig
from transforms.text.models import TextModelSpec


@dataclass(frozen=True)
class WindowConfig:
    window_tokens: int = 512
    stride_tokens: int = 64

    def __post_init__(self) -> None:
        if (
            not 8 <= self.window_tokens <= 8192
            or not 0 <= self.stride_tokens < self.window_tokens // 2
        ):
            raise ConfigError(
                "--window_tokens must be in [8, 8192] and --stride_tokens in "
                f"[0, window/2), got {self.window_tokens} and {self.stride_tokens}"
            )


@dataclass
class TextWindow:
    """One model input: ``ids`` include special tokens; the rest describe the document tokens."""

    doc_id: str
    index: int
    n_windows: int
    n_tokens: int
    token_start: int
    ids: list[int]
    prefix: int  # special tokens before the first document token
    offsets: list[tuple[int, int]] = field(default_factory=list)
    word_ids: list[int] = field(default_factory=list)
    text: str | None = None  # only on window 0: entity text comes from the original
    output: Any = None
    labels: list[str] = field(default_factory=list)  # class index -> name, set by the model
    error: str | None = None


def window_starts(n_tokens: int, body: int, stride: int) -> list[int]:
    """Start token of each window of ``body`` tokens overlapping by ``stride``; covers all."""
    if n_tokens <= body:
        return [0]
    step = body - stride
    starts = list(range(0, n_tokens - body, step))
    return starts + [n_tokens - body] if starts[-1] != n_tokens - body else starts


def window_length(window: TextWindow) -> int:
    return len(window.ids)


class _Tokenize(beam.DoFn):
    """Document row -> ``TextWindow``s (tokenizer loaded once per process through Shared)."""

    def __init__(self, spec: TextModelSpec, windows: WindowConfig) -> None:
        self._spec = spec
        self._windows = windows
        self._shared = Shared()
        self._tokenizer: Any = None

    def setup(self) -> None:
        from transforms.text.models import load_tokenizer

        self._tokenizer = self._shared.acquire(
            lambda: _Holder(load_tokenizer(self._spec)), tag="tokenizer|" + self._spec.shared_tag
        ).value
        self._special = special_tokens(self._tokenizer)

    def process(self, doc: dict[str, Any]) -> Iterator[Any]:
        windows = make_windows(self._tokenizer, doc, self._windows, self._special)
        if not windows:
            error = PipelineError("the text has no tokens for this model's tokenizer")
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, dead_letter(f"Tokenize/{self._spec.name}", doc["doc_id"], error, doc)
            )
            return
        progress.count("documents_tokenized")
        progress.count("windows", len(windows))
        yield from windows


def make_windows(
    tokenizer: Any,
    doc: dict[str, Any],
    cfg: WindowConfig,
    special: tuple[list[int], list[int]] | None = None,
) -> list[TextWindow]:
    """Tokenize a document once (with character offsets) and cut it into overlapping windows."""
    head, tail = special or special_tokens(tokenizer)
    enc = tokenizer(
        doc["text"], add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    ids, offsets, words = enc["input_ids"], enc["offset_mapping"], enc.word_ids()
    if not ids:
        return []
    body = cfg.window_tokens - len(head) - len(tail)
    starts = window_starts(len(ids), body, cfg.stride_tokens)
    return [
        TextWindow(
            doc_id=doc["doc_id"],
            index=i,
            n_windows=len(starts),
            n_tokens=len(ids),
            token_start=start,
            ids=head + ids[start : start + body] + tail,
            prefix=len(head),
            offsets=[tuple(o) for o in offsets[start : start + body]],
            word_ids=[-1 if w is None else w for w in words[start : start + body]],
            text=doc["text"] if i == 0 else None,
        )
        for i, start in enumerate(starts)
    ]


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after one sequence (``[CLS]``, ``[SEP]`` for BERT)."""
    enc = tokenizer("a", add_special_tokens=True, return_special_tokens_mask=True)
    ids, special = enc["input_ids"], enc["special_tokens_mask"]
    first = special.index(0)
    last = len(special) - 1 - special[::-1].index(0)
    return ids[:first], ids[last + 1 :]


class _Holder:
    """A weak-referenceable box for objects ``Shared`` keeps (tokenizers may not be)."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _RunTextModel(beam.DoFn):
    """A batch of windows -> the same windows with ``output`` (or ``error``) filled in."""

    def __init__(self, spec: TextModelSpec) -> None:
        self._spec = spec
        self._shared = Shared()
        self._model: Any = None

    def setup(self) -> None:
        from transforms.text.models import load_text_model

        self._model = self._shared.acquire(
            lambda: load_text_model(self._spec), tag=self._spec.shared_tag
        )
        self._runner = SplittingRunner(self._forward, max_size=4096)
        id2label = self._model.id2label
        self._labels = [id2label.get(i, f"LABEL_{i}") for i in range(max(id2label, default=-1) + 1)]

    def _forward(self, batch: list[TextWindow]) -> list[Any]:
        from transforms.text.models import forward

        return forward(self._model, [w.ids for w in batch])

    def process(self, batch: Sequence[TextWindow]) -> Iterator[TextWindow]:
        for window, out, error in self._runner.run(batch):
            if error is not None:  # the window's document becomes a dead letter when merged
                window.error = f"{type(error).__name__}: {error}"
                yield window
                continue
            if not np.all(np.isfinite(out)):
                window.error = "ModelOutputError: the model returned non-finite values"
            window.output, window.labels = out, self._labels
            yield window
        progress.count("windows_inferred", len(batch))


class _RouteByWindows(beam.DoFn):
    """Single-window documents skip the shuffle; only windowed documents are grouped."""

    MULTI = "multi"

    def process(self, window: TextWindow) -> Iterator[Any]:
        if window.n_windows == 1:
            yield window.doc_id, [window]
        else:
            yield beam.pvalue.TaggedOutput(self.MULTI, (window.doc_id, window))


class _MergeWindows(beam.DoFn):
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


class RunTextModel(beam.PTransform):
    """Document rows -> rows of the task's table for one model.

    Out: a dict with ``rows`` and ``DEAD_LETTER`` rows.
    """

    def __init__(
        self, spec: TextModelSpec, windows: WindowConfig, batching: TokenBatchingConfig, run_id: str
    ) -> None:
        super().__init__()
        self._spec, self._windows, self._batching, self._run_id = spec, windows, batching, run_id

    def expand(self, docs: beam.PCollection) -> dict[str, beam.PCollection]:
        tokenized = docs | "Tokenize" >> beam.ParDo(
            _Tokenize(self._spec, self._windows)
        ).with_outputs(DEAD_LETTER, main="windows")
        routed = (
            tokenized.windows
            | "SortAndBatch" >> SortAndBatchByTokens(self._batching, window_length)
            | "Infer" >> beam.ParDo(_RunTextModel(self._spec))
            | "RouteByWindows"
            >> beam.ParDo(_RouteByWindows()).with_outputs(_RouteByWindows.MULTI, main="single")
        )
        grouped = routed[_RouteByWindows.MULTI] | "GroupWindows" >> beam.GroupByKey()
        merged = (
            (routed.single, grouped)
            | "AllDocuments" >> beam.Flatten()
            | "MergeWindows"
            >> beam.ParDo(_MergeWindows(self._spec, self._run_id)).with_outputs(
                DEAD_LETTER, main="rows"
            )
        )
        errors = (tokenized[DEAD_LETTER], merged[DEAD_LETTER]) | "Errors" >> beam.Flatten()
        return {"rows": merged.rows, DEAD_LETTER: errors}
