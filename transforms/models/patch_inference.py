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

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, ConfigError, ModelOutputError, dead_letter
from transforms.models.spec import LoadedModel, ModelSpec


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


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA or CPU out-of-memory error (torch's, or Python's MemoryError)."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class SplittingRunner:
    """Run a batch function so that only the elements that fail on their own fail.

    A failing batch is split in halves and retried, down to single elements (bisection), so one
    bad input costs O(log n) extra calls and every other element still gets its result. An
    out-of-memory error also lowers the batch-size cap for later batches (Beam has had an open
    request for this since 2022: apache/beam#21447).
    """

    def __init__(self, fn: Any, max_size: int) -> None:
        self._fn = fn
        self.cap = max_size

    def run(self, batch: Sequence[Any]) -> list[tuple[Any, Any, BaseException | None]]:
        """``(element, result, error)`` for every element, in order."""
        out: list[tuple[Any, Any, BaseException | None]] = []
        for start in range(0, len(batch), self.cap):
            out += self._run(list(batch[start : start + self.cap]))
        return out

    def _run(self, batch: list[Any]) -> list[tuple[Any, Any, BaseException | None]]:
        try:
            return [(x, r, None) for x, r in zip(batch, self._fn(batch), strict=True)]
        except Exception as exc:  # noqa: BLE001 - split, then blame single elements only
            if len(batch) == 1:
                return [(batch[0], None, exc)]
            if is_out_of_memory(exc):
                self.cap = max(1, min(self.cap, len(batch) // 2))
                progress.count("oom_backoffs")
            progress.count("batch_splits")
            mid = len(batch) // 2
            return self._run(batch[:mid]) + self._run(batch[mid:])


class _RunModelBatches(beam.DoFn):
    def __init__(self, spec: ModelSpec, patch_px: int, run_id: str) -> None:
        self._spec = spec
        self._patch_px = patch_px
        self._run_id = run_id
        self._shared = Shared()
        self._handler: Any = None
        self._model: LoadedModel | None = None

    def setup(self) -> None:
        from transforms.models.handler import PatchModelHandler  # imports torch

        self._handler = PatchModelHandler(self._spec, self._patch_px)
        # A load failure raises here and fails the job with the model's name, URI and cause.
        self._model = self._shared.acquire(self._handler.load_model, tag=self._spec.shared_tag)
        self._runner = SplittingRunner(self._infer, max_size=4096)

    def _infer(self, batch: list[Any]) -> list[np.ndarray]:
        return [r.inference for r in self._handler.run_inference(batch, self._model)]

    def process(self, batch: Sequence[Any]) -> Iterator[Any]:
        spec = self._spec
        stage = f"RunModel/{spec.name}"
        progress.count("batches", 1)
        inferred = 0
        for patch, probs, error in self._runner.run(batch):
            if error is not None:
                progress.count("patches_failed")
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER, dead_letter(stage, patch.key, error, _patch_input(patch, spec))
                )
                continue
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
