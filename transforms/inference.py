"""RunModel: patches -> batches -> one shared model per process -> prediction rows.

Why not Beam's ``RunInference``: it sends a whole failed batch to its failure output and cannot
flag single non-finite predictions; here a failed batch becomes one dead letter per patch and a
NaN/inf prediction is a dead letter, never a row. The model still loads through the handler's
``load_model`` hook, once per worker process, via ``apache_beam.utils.shared.Shared``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.utils.shared import Shared

from transforms import progress
from transforms.errors import DEAD_LETTER, ConfigError, ModelOutputError, dead_letter
from transforms.models import LoadedModel, ModelSpec


@dataclass(frozen=True)
class BatchingConfig:
    """Batch size bounds for ``BatchElements``; equal bounds give fixed-size batches."""

    min_batch_size: int = 32
    max_batch_size: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch_size <= self.max_batch_size <= 4096:
            raise ConfigError(
                "--min_batch_size/--max_batch_size (or --batch_size) must satisfy "
                f"1 <= min <= max <= 4096, got {self.min_batch_size} and {self.max_batch_size}"
            )


def prediction_row(patch: Any, probs: np.ndarray, spec: ModelSpec, run_id: str) -> dict:
    """One ``patch_predictions`` row."""
    return {
        "slide_id": patch.slide_id,
        "model_name": spec.name,
        "model_version": spec.version,
        "x_px": patch.x_px,
        "y_px": patch.y_px,
        "size_px": patch.size_px,
        "level": patch.level,
        "mpp": patch.mpp,
        "probs": [float(p) for p in probs],
        "label": int(np.argmax(probs)),
        "run_id": run_id,
    }


class _RunModelBatches(beam.DoFn):
    def __init__(self, spec: ModelSpec, patch_px: int, run_id: str) -> None:
        self._spec = spec
        self._patch_px = patch_px
        self._run_id = run_id
        self._shared = Shared()
        self._handler: Any = None
        self._model: LoadedModel | None = None

    def setup(self) -> None:
        from transforms.model_handler import PatchModelHandler  # imports torch

        self._handler = PatchModelHandler(self._spec, self._patch_px)
        # A load failure raises here and fails the job with the model's name, URI and cause.
        self._model = self._shared.acquire(self._handler.load_model, tag=self._spec.shared_tag)

    def process(self, batch: Sequence[Any]) -> Iterator[Any]:
        spec = self._spec
        stage = f"RunModel/{spec.name}"
        try:
            results = self._handler.run_inference(batch, self._model)
        except Exception as exc:  # noqa: BLE001 - each patch of the batch becomes a dead letter
            progress.count("patches_failed", len(batch))
            for patch in batch:
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER, dead_letter(stage, patch.key, exc, _patch_input(patch, spec))
                )
            return
        progress.count("batches", 1)
        inferred = 0
        for result in results:
            probs, patch = result.inference, result.example
            if not np.all(np.isfinite(probs)):
                error = ModelOutputError(f"model {spec.name!r} returned non-finite values {probs}")
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER, dead_letter(stage, patch.key, error, _patch_input(patch, spec))
                )
                continue
            inferred += 1
            yield prediction_row(patch, probs, spec, self._run_id)
        progress.count("patches_inferred", inferred)


def _patch_input(patch: Any, spec: ModelSpec) -> dict:
    return {
        "slide_id": patch.slide_id,
        "x_px": patch.x_px,
        "y_px": patch.y_px,
        "size_px": patch.size_px,
        "level": patch.level,
        "model_name": spec.name,
        "model_version": spec.version,
    }


class RunModel(beam.PTransform):
    """Patches -> ``patch_predictions`` rows for one model.

    In: ``Patch``. Out: a dict with ``predictions`` rows and ``DEAD_LETTER`` rows.
    """

    def __init__(
        self, spec: ModelSpec, batching: BatchingConfig, run_id: str, patch_px: int
    ) -> None:
        super().__init__()
        self._spec = spec
        self._batching = batching
        self._run_id = run_id
        self._patch_px = patch_px

    def expand(self, patches: beam.PCollection) -> dict[str, beam.PCollection]:
        infer = _RunModelBatches(self._spec, self._patch_px, self._run_id)
        out = (
            patches
            | "Batch"
            >> beam.BatchElements(
                min_batch_size=self._batching.min_batch_size,
                max_batch_size=self._batching.max_batch_size,
            )
            | "Infer" >> beam.ParDo(infer).with_outputs(DEAD_LETTER, main="predictions")
        )
        return {"predictions": out.predictions, DEAD_LETTER: out[DEAD_LETTER]}
