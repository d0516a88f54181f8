"""``embedding``: one ``N x D`` vector per patch (``patch_embeddings``; the slide's mean vector
goes to ``slide_embeddings``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from transforms.io.schemas import Column, Table
from transforms.models.kinds.base import (
    RUN_COLUMNS,
    SLIDE_CLUSTER,
    SLIDE_KEY,
    GuardConfig,
    GuardFigures,
    OutputKind,
    Outputs,
    PatchRegion,
    cosine_figures,
    first_output,
    patch_table,
    shape_error,
)

EMBEDDING_KEYS = ("auto", "pooler", "cls", "mean")
"""How an embedding is taken from a model's output: ``pooler`` (``pooler_output``), ``cls`` (the
first token of ``last_hidden_state``), ``mean`` (the mean over its tokens), ``auto`` (a 2-D
output as it is, else ``pooler`` when the model has one, else ``cls``); any other value names an
output (a dict key, or an ONNX output name) that is N x D."""


class Embedding(OutputKind):
    name = "embedding"
    output = "embeddings"
    table = patch_table(
        "patch_embeddings",
        Column("embedding", "FLOAT32", "REPEATED", description="the model's vector, as it is"),
    )
    slide_table = Table(
        "slide_embeddings",
        (
            Column("slide_id", "STRING", "REQUIRED"),
            Column("model_name", "STRING", "REQUIRED"),
            Column("model_version", "STRING", "REQUIRED"),
            Column("patch_count", "INT64", "REQUIRED"),
            Column("embedding", "FLOAT32", "REPEATED", description="mean of the patch embeddings"),
            *RUN_COLUMNS,
        ),
        SLIDE_KEY,
        SLIDE_CLUSTER,
    )
    hf_auto_class = "AutoModel"
    help = "N x D vectors"
    has_classes = False

    def results(
        self, outputs: Outputs, spec: Any, n: int, regions: Sequence[PatchRegion] | None
    ) -> list:
        name, vectors = _vectors(outputs, spec)
        if vectors.ndim != 2 or vectors.shape[0] != n:
            raise shape_error(spec, self.name, name, vectors.shape, f"({n}, dim) vectors")
        return list(vectors.astype(np.float32, copy=False))

    def row(self, result: Any) -> dict:
        return {"embedding": np.asarray(result, np.float32).tolist()}

    def compare(self, reduced: list, exact: list, cfg: GuardConfig) -> GuardFigures:
        return cosine_figures(np.stack(reduced), np.stack(exact), cfg)


def _vectors(outputs: Outputs, spec: Any) -> tuple[str, np.ndarray]:
    """The output named by ``spec.embedding_key`` (``EMBEDDING_KEYS``), tokens pooled."""
    key = spec.embedding_key
    if key not in EMBEDDING_KEYS:
        if key not in outputs:
            raise ValueError(
                f"model {spec.name!r}: --embedding_key {spec.name}={key} names no output; it "
                f"has {', '.join(sorted(outputs))}"
            )
        return key, outputs[key]
    if key == "pooler" or (key == "auto" and "pooler_output" in outputs):
        if "pooler_output" not in outputs:
            raise ValueError(
                f"model {spec.name!r}: --embedding_key {spec.name}=pooler, but it has no "
                f"pooler_output (it has {', '.join(sorted(outputs))}); use cls or mean"
            )
        return "pooler_output", outputs["pooler_output"]
    name, vectors = first_output(outputs, "last_hidden_state")
    if vectors.ndim == 3 and key in ("auto", "cls"):
        vectors = vectors[:, 0]
    elif vectors.ndim == 3 and key == "mean":
        vectors = vectors.mean(axis=1)
    return name, vectors


KIND = Embedding()
