"""RunModel: patches -> batches -> one shared model per process -> rows of the model's table.

Each model writes its output kind's table (``models/kinds``: ``patch_predictions``,
``patch_embeddings``, ``patch_segmentations``, ...); the rows share the patch box.

Why not Beam's ``RunInference``: it sends a whole failed batch to its failure output and cannot
flag single non-finite predictions; here a failed batch is bisected down to the patches that fail
alone, and a NaN/inf prediction is a dead letter, never a row (``ModelRunner``). The model still
loads through ``PatchModelHandler.load_model``, the hook Beam's own ``RunInference`` calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, ConfigError, dead_letter
from transforms.core.guard import GUARD
from transforms.models.recipe import modality_refuses
from transforms.models.runner import MAX_BATCH, ModelRunner
from transforms.models.spec import ModelSpec
from transforms.slides.stitch import CLASS_MAPS, mask_piece


@dataclass(frozen=True)
class BatchingConfig:
    """Batch size bounds for ``BatchElements``; equal bounds give fixed-size batches."""

    min_batch_size: int = 1
    max_batch_size: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch_size <= self.max_batch_size <= MAX_BATCH:
            raise ConfigError(
                f"`min_batch_size`/`max_batch_size` must satisfy 1 <= min <= max <= {MAX_BATCH}, "
                f"got {self.min_batch_size} and {self.max_batch_size}"
            )

    @classmethod
    def fixed(cls, size: int) -> BatchingConfig:
        """Batches of exactly ``size`` (the last of a bundle may be smaller)."""
        try:
            return cls(size, size)
        except ConfigError:
            raise ConfigError(f"`batch_size` must be in [1, {MAX_BATCH}], got {size}") from None


def _box(patch: Any, spec: ModelSpec, run_id: str) -> dict:
    return {
        "slide_id": patch.slide_id,
        "model_name": spec.name,
        "model_version": spec.version,
        "x_px": patch.x_px,
        "y_px": patch.y_px,
        "size_px": patch.size_px,
        "level": patch.level,
        "mpp": patch.mpp,
        "valid_width_px": patch.valid_px[0],
        "valid_height_px": patch.valid_px[1],
        "run_id": run_id,
    }


def result_row(patch: Any, result: Any, spec: ModelSpec, run_id: str) -> dict:
    """One row of the model's output kind's table: the patch box and the kind's columns."""
    return {**_box(patch, spec, run_id), **spec.kind.row(result)}


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


def _its_modality(patch: Any, modality: str) -> bool:
    """Whether ``patch``'s slide is of the kind a model of ``modality`` takes."""
    method = patch.appearance.tissue.method if patch.appearance is not None else None
    if modality_refuses(modality, method):
        progress.count("patches_refused_modality")
        return False
    return True


class _RunPatchModel(ModelRunner):
    """A batch of ``Patch`` -> result rows, and a dead letter per patch that failed."""

    def __init__(
        self, spec: ModelSpec, patch_px: int, run_id: str, guard: Any, max_batch_size: int
    ) -> None:
        super().__init__(spec.name, spec.shared_tag)
        self._spec = spec
        self._patch_px = patch_px
        self._run_id = run_id
        self._guard = guard
        self._max_batch_size = max_batch_size
        self._handler: Any = None

    def setup(self) -> None:
        from transforms.slides.patch_handler import PatchModelHandler  # imports torch

        self._handler = PatchModelHandler(
            self._spec, self._patch_px, max_batch_size=self._max_batch_size, guard=self._guard
        )
        super().setup()  # loads once per process; a failure fails the job, naming the model

    def load(self) -> Any:
        return self._handler.load_model()

    def infer(self, model: Any, batch: list[Any]) -> list[Any]:
        return [r.inference for r in self._handler.run_inference(batch, model)]

    def process(self, batch: Sequence[Any]) -> Iterator[Any]:
        stage = f"RunModel/{self._spec.name}"
        progress.count("batches")
        inferred = 0
        for patch, result, error in self.outcomes(batch):
            if error is not None:
                progress.count("patches_failed")
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER,
                    dead_letter(stage, patch.key, error, _patch_input(patch, self._spec)),
                )
                continue
            inferred += 1
            yield result_row(patch, result, self._spec, self._run_id)
            owned = getattr(result, "owned", None)
            if owned is not None:  # a class map: its piece of the slide's stitched mask
                yield beam.pvalue.TaggedOutput(CLASS_MAPS, mask_piece(patch, self._spec, owned))
        progress.count("patches_inferred", inferred)
        yield from self.guard_outputs()


class RunModel(beam.PTransform):
    """Patches -> result rows of one model (its output kind's table).

    In: ``Patch``. Out: a dict with ``rows``, ``DEAD_LETTER`` rows, the accuracy guard's
    ``GUARD`` rows and, for class-map kinds, ``CLASS_MAPS``: each patch's piece of its slide's
    stitched mask (``stitch.MaskPiece``).
    """

    def __init__(
        self,
        spec: ModelSpec,
        batching: BatchingConfig,
        run_id: str,
        patch_px: int,
        guard: Any = None,
    ) -> None:
        super().__init__()
        self._spec = spec
        self._batching = batching
        self._run_id = run_id
        self._patch_px = patch_px
        self._guard = guard

    def expand(self, patches: beam.PCollection) -> dict[str, beam.PCollection]:
        if self._spec.modality != "any":  # its slides' dead letters come with their summaries
            patches = patches | "OnlyItsModality" >> beam.Filter(_its_modality, self._spec.modality)
        out = (
            patches
            | "Batch"
            >> beam.BatchElements(
                min_batch_size=self._batching.min_batch_size,
                max_batch_size=self._batching.max_batch_size,
            )
            | "Infer"
            >> beam.ParDo(
                _RunPatchModel(
                    self._spec,
                    self._patch_px,
                    self._run_id,
                    self._guard,
                    self._batching.max_batch_size,
                )
            ).with_outputs(DEAD_LETTER, GUARD, CLASS_MAPS, main="rows")
        )
        return {
            "rows": out.rows,
            DEAD_LETTER: out[DEAD_LETTER],
            GUARD: out[GUARD],
            CLASS_MAPS: out[CLASS_MAPS],
        }
