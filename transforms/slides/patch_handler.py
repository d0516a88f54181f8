"""A Beam ``ModelHandler`` for patch models, usable with Beam's own ``RunInference`` too.

Kept apart from ``loading.py``: importing ``apache_beam.ml.inference.base`` imports torch
(Beam 2.77's model manager does), and building a pipeline graph must not: ``RunModel`` creates
this handler inside its DoFn's ``setup()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.core.errors import ModelLoadError, SlideError
from transforms.models.loading import (
    check_class_count,
    compile_model,
    guarded,
    load_model,
    predict,
)
from transforms.models.precision import GuardConfig
from transforms.models.spec import ModelSpec
from transforms.models.torch_models import LoadedModel
from transforms.slides.stain_norm import normalise
from transforms.slides.stains import eho, reference_basis
from transforms.slides.survey import SlideAppearance
from transforms.slides.tissue import TissueRule

_LOG = logging.getLogger(__name__)


def model_input(pixels: np.ndarray, appearance: Any, spec: ModelSpec) -> np.ndarray:
    """What the model is handed for one patch: its RGB, stain-normalised if the model asks, or
    its EHO stain channels by its slide's stain basis (``appearance``: the slide's
    ``SlideAppearance``; after normalisation, the normalised slide's basis).

    Raises ``SlideError`` when the model needs a stain basis and the slide has none (a dead
    letter per patch).
    """
    if not spec.needs_stains:
        return pixels
    stains = appearance.stains if appearance is not None else None
    if stains is None:
        need = "EHO stain channels" if spec.input == "eho" else f"{spec.stain_norm} normalisation"
        raise SlideError(
            f"model {spec.name!r} takes {need}, but this slide has no H&E stain basis (a "
            "fluorescence slide, or too little stained tissue in its survey image)"
        )
    if spec.stain_norm != "none":
        assert spec.stain_reference is not None
        pixels = normalise(pixels, stains, spec.stain_norm, spec.stain_reference)
        if spec.input == "rgb":
            return pixels
        stains = appearance.stains_for(spec.stain_key)
        if stains is None:
            raise SlideError(f"model {spec.name!r}: the slide's normalised stain basis is missing")
    return eho(pixels, stains)


class PatchModelHandler(ModelHandler):
    """Beam ``ModelHandler`` for patch models: ``Patch`` in; class probabilities, an embedding
    or a class-map summary out (the model's output kind).

    Usable with Beam's own ``RunInference`` too; this project's ``RunModel`` uses the same hooks
    and adds per-element dead letters around them.
    """

    def __init__(
        self,
        spec: ModelSpec,
        patch_px: int,
        min_batch_size: int = 1,
        max_batch_size: int = 64,
        guard: GuardConfig | None = None,
    ) -> None:
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._max_batch_size = max_batch_size
        self.spec = spec
        self.patch_px = patch_px
        self.guard = guard or GuardConfig()

    def load_model(self) -> LoadedModel:
        """Load the model and check it takes ``patch_px`` patches, so a mismatch fails the job
        at setup instead of turning every patch into a dead letter. A compiled model
        (``--compile``) compiles here, once per process."""
        model = load_model(self.spec)
        blank = np.zeros((self.patch_px, self.patch_px, 3), np.uint8)
        try:
            basis = reference_basis()
            check = SlideAppearance(
                TissueRule("brightfield", 0.0), basis, ((self.spec.stain_key, basis),)
            )
            patch = [model_input(blank, check, self.spec)]
            if self.spec.compile:
                self._compile(model, patch)
            result = predict(model, patch, self.spec)[0]
        except Exception as exc:
            raise ModelLoadError(
                f"model {self.spec.name!r} from {self.spec.uri} fails on a "
                f"{self.patch_px}x{self.patch_px} patch (--patch_px {self.patch_px}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        check_class_count(self.spec, self.spec.kind.class_count(result), "it returns")
        return model

    def _compile(self, model: LoadedModel, patch: list[np.ndarray]) -> None:
        """Compile ``model`` for its precision and build the graph now, at setup."""
        compile_model(model, self._max_batch_size)
        started = time.monotonic()
        predict(model, patch, self.spec)
        _LOG.info(
            "model %s compiled in %s for batches of %d in %.1f s",
            self.spec.name,
            model.precision,
            self._max_batch_size,
            time.monotonic() - started,
        )

    def run_inference(
        self, batch: Sequence[Any], model: LoadedModel, inference_args: dict | None = None
    ) -> list[PredictionResult]:
        pixels = [model_input(patch.pixels, patch.appearance, self.spec) for patch in batch]
        regions = None
        if self.spec.kind.needs_tissue:  # e.g. class areas count tissue pixels only
            regions = [
                patch.region(
                    patch.appearance.tissue.mask(patch.pixels) if patch.appearance else None
                )
                for patch in batch
            ]
        results = guarded(model, pixels, self.spec, regions, self.guard)
        return [
            PredictionResult(example=patch, inference=r, model_id=self.spec.shared_tag)
            for patch, r in zip(batch, results, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(patch.pixels.nbytes for patch in batch)
