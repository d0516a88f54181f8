"""``classification``: ``N x C`` logits -> class probabilities per patch (``patch_predictions``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from transforms.io.schemas import Column
from transforms.models.kinds.base import (
    GuardConfig,
    GuardFigures,
    OutputKind,
    Outputs,
    PatchRegion,
    activate,
    first_output,
    label_figures,
    patch_table,
    shape_error,
)


class Classification(OutputKind):
    name = "classification"
    output = "predictions"
    table = patch_table(
        "patch_predictions",
        Column("probs", "FLOAT64", "REPEATED"),
        Column("label", "INT64", "REQUIRED", description="argmax of probs"),
    )
    hf_auto_class = "AutoModelForImageClassification"
    help = "N x C logits"
    picture = "heatmaps"

    def results(
        self, outputs: Outputs, spec: Any, n: int, regions: Sequence[PatchRegion] | None
    ) -> list:
        name, logits = first_output(outputs, "logits")
        if logits.ndim != 2 or logits.shape[0] != n:
            raise shape_error(spec, self.name, name, logits.shape, f"({n}, n_classes) logits")
        return list(activate(logits, spec.activation))

    def row(self, result: Any) -> dict:
        return {"probs": [float(p) for p in result], "label": int(np.argmax(result))}

    def compare(self, reduced: list, exact: list, cfg: GuardConfig) -> GuardFigures:
        return label_figures(np.stack(reduced), np.stack(exact), cfg)

    def class_count(self, result: Any) -> int | None:
        return len(result)

    def slide_values(self, row: dict) -> Sequence[float]:
        return row["probs"]

    def qupath_values(self, row: dict) -> Sequence[float] | None:
        return row["probs"]


KIND = Classification()
