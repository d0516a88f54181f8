"""Documents -> token windows: each document tokenized once, cut into overlapping windows.

Long documents are never truncated: they are cut into windows of ``window_tokens`` (special
tokens included) that overlap by ``stride_tokens``; ``merge`` joins a document's windows again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.utils.shared import Shared

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, ConfigError, PipelineError, dead_letter
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
                "`window_tokens` must be in [8, 8192] and `stride_tokens` in "
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


class TokenizeDocument(beam.DoFn):
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
