"""The text tasks, one object each: what a task means everywhere in the text pipeline.

A task holds its table, its Hugging Face auto class, how a padded forward pass becomes one
array per window, how the accuracy guard compares two precisions, and how a document's windows
merge into its row. The pipeline, the loader, the guard and the merge ask the task; none
branches on its name. A new task is a class here and a line in ``TASKS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from transforms.core.errors import ConfigError
from transforms.io.schemas import RUN_COLUMNS, Column, Table
from transforms.models.kinds.base import cosine_figures, label_figures
from transforms.models.precision import GuardConfig, GuardFigures
from transforms.text.entities import entities

_TEXT_KEYS = (
    Column("doc_id", "STRING", "REQUIRED"),
    Column("model_name", "STRING", "REQUIRED"),
    Column("model_version", "STRING", "REQUIRED"),
)
_TEXT_SHAPE = (
    Column("n_tokens", "INT64", "REQUIRED", description="tokens in the document, no specials"),
    Column("n_windows", "INT64", "REQUIRED", description="model windows the document took"),
    *RUN_COLUMNS,
)


def _table(name: str, *columns: Column) -> Table:
    return Table(
        name,
        (*_TEXT_KEYS, *columns, *_TEXT_SHAPE),
        ("doc_id", "model_name", "model_version"),
        ("doc_id", "model_name"),
    )


LabelOf = Callable[[int], str]


class TextTask:
    """One text task. Subclasses set the attributes and implement the three methods."""

    name = ""
    table: Table
    hf_auto_class = "AutoModel"
    help = ""

    def window_outputs(self, loaded: Any, out: Any, mask: Any, lengths: list[int]) -> list:
        """A padded forward pass's output -> one array per window (torch tensors in)."""
        raise NotImplementedError

    def compare(self, reduced: list, exact: list, cfg: GuardConfig) -> GuardFigures:
        raise NotImplementedError

    def document(self, windows: Sequence[Any], label_of: LabelOf) -> dict:
        """The task's columns of a document's row, from its windows in order."""
        raise NotImplementedError


class Embedding(TextTask):
    name = "embedding"
    table = _table(
        "text_embeddings",
        Column("embedding", "FLOAT64", "REPEATED", description="mean-pooled, L2-normalised"),
        Column("dim", "INT64", "REQUIRED"),
    )
    help = "mean-pooled, L2-normalised document vectors"

    def window_outputs(self, loaded: Any, out: Any, mask: Any, lengths: list[int]) -> list:
        """The sum of token vectors (``H + 1``: the last value is the token count, so windows
        merge into a document mean)."""
        import torch

        hidden = out.last_hidden_state.float()
        summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)
        counts = mask.sum(dim=1, keepdim=True).float()
        return list(torch.cat([summed, counts], dim=1).cpu().numpy().astype(np.float64))

    def compare(self, reduced: list, exact: list, cfg: GuardConfig) -> GuardFigures:
        # the last value, the token count, is left out of the cosine
        return cosine_figures(np.stack(reduced)[:, :-1], np.stack(exact)[:, :-1], cfg)

    def document(self, windows: Sequence[Any], label_of: LabelOf) -> dict:
        total = np.sum([w.output for w in windows], axis=0)
        vector = total[:-1] / total[-1]
        vector = vector / max(np.linalg.norm(vector), 1e-12)
        return {"embedding": vector.tolist(), "dim": len(vector)}


class TextClassification(TextTask):
    name = "text-classification"
    table = _table(
        "text_labels",
        Column(
            "labels",
            "RECORD",
            "REPEATED",
            (Column("label", "STRING", "REQUIRED"), Column("score", "FLOAT64", "REQUIRED")),
            "every label with its score, best first",
        ),
        Column("top_label", "STRING", "REQUIRED"),
    )
    hf_auto_class = "AutoModelForSequenceClassification"
    help = "labels per document (softmax, or sigmoid for multi-label models)"

    def window_outputs(self, loaded: Any, out: Any, mask: Any, lengths: list[int]) -> list:
        import torch

        logits = out.logits.float()
        probs = torch.sigmoid(logits) if loaded.multi_label else torch.softmax(logits, -1)
        return list(probs.cpu().numpy())

    def compare(self, reduced: list, exact: list, cfg: GuardConfig) -> GuardFigures:
        return label_figures(np.stack(reduced), np.stack(exact), cfg)

    def document(self, windows: Sequence[Any], label_of: LabelOf) -> dict:
        probs = np.mean([w.output for w in windows], axis=0)
        order = np.argsort(-probs)
        labels = [{"label": label_of(int(i)), "score": float(probs[i])} for i in order]
        return {"labels": labels, "top_label": labels[0]["label"]}


class TokenClassification(TextTask):
    name = "token-classification"
    table = _table(
        "text_entities",
        Column(
            "entities",
            "RECORD",
            "REPEATED",
            (
                Column("label", "STRING", "REQUIRED"),
                Column("score", "FLOAT64", "REQUIRED"),
                # not start/end: END is a reserved word in BigQuery SQL
                Column("start_char", "INT64", "REQUIRED", description="offset, inclusive"),
                Column("end_char", "INT64", "REQUIRED", description="offset, exclusive"),
                Column("text", "STRING", "REQUIRED", description="text[start_char:end_char]"),
            ),
        ),
    )
    hf_auto_class = "AutoModelForTokenClassification"
    help = "entity spans with character offsets (B-/I- tags grouped)"

    def window_outputs(self, loaded: Any, out: Any, mask: Any, lengths: list[int]) -> list:
        import torch

        tokens = torch.softmax(out.logits.float(), dim=-1).cpu().numpy()
        return [tokens[i, :n] for i, n in enumerate(lengths)]

    def compare(self, reduced: list, exact: list, cfg: GuardConfig) -> GuardFigures:
        # every token's probabilities
        return label_figures(np.concatenate(reduced), np.concatenate(exact), cfg)

    def document(self, windows: Sequence[Any], label_of: LabelOf) -> dict:
        return {"entities": entities(windows, label_of)}


TASKS: dict[str, TextTask] = {
    t.name: t for t in (TokenClassification(), TextClassification(), Embedding())
}
TASK_NAMES = tuple(TASKS)


def task(name: str) -> TextTask:
    """The text task called ``name``; ``ConfigError`` naming ``task`` otherwise."""
    if name not in TASKS:
        raise ConfigError(f"`task` {name!r}: one of {', '.join(TASK_NAMES)}")
    return TASKS[name]
