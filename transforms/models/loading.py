"""Loading any patch model and running a batch through it: the one entry point for every format.

``load_model`` picks the loader from ``ModelSpec.format`` (``.pt2``, ``state_dict``, Hugging Face
folder: torch; ``.onnx``: onnxruntime) and wraps every failure in a ``ModelLoadError`` naming the
model, its version, the URI and the cause. ``predict`` turns a batch into one result per patch of
the model's output kind (``outputs.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from transforms.core.errors import ModelLoadError
from transforms.models.precision import GuardConfig, resolve, run_guarded
from transforms.models.spec import ModelSpec
from transforms.models.torch_models import LoadedModel, TorchModel, select_device

_LOG = logging.getLogger(__name__)


def load_model(spec: ModelSpec) -> LoadedModel:
    """``spec`` loaded onto its device. Raises ``ModelLoadError`` (fatal for the job)."""
    try:
        if spec.format == "onnx":
            from transforms.models.onnx_models import load_onnx

            model: LoadedModel = load_onnx(spec)
        else:
            from transforms.models.torch_models import load_torch

            model = load_torch(spec, select_device(spec.require_gpu))
    except ModelLoadError as exc:
        raise ModelLoadError(f"model {spec.name!r} from {spec.uri}: {exc}") from exc
    except Exception as exc:
        raise ModelLoadError(
            f"model {spec.name!r} (version {spec.version}) could not be loaded from {spec.uri}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    model.precision = resolve(spec.precision, model.device, spec.format)
    model.auto = spec.precision == "auto"
    _LOG.info(
        "loaded model %s version %s (%s, %s) on %s in %s",
        spec.name,
        spec.version,
        spec.format,
        spec.output_kind,
        model.device,
        model.precision,
    )
    return model


def check_class_count(spec: ModelSpec, n_classes: int | None, how: str) -> None:
    """Refuse ``--class_names`` whose count is not the model's number of classes (``how``:
    where that number was read, for the message)."""
    if spec.class_names and n_classes is not None and n_classes != len(spec.class_names):
        raise ModelLoadError(
            f"--class_names {spec.name}= gives {len(spec.class_names)} names "
            f"({', '.join(spec.class_names)}), but the model has {n_classes} classes ({how})"
        )


def compile_model(model: LoadedModel, batch_size: int) -> None:
    """``torch.compile`` a torch model for batches of ``batch_size`` (``TorchModel.compile``)."""
    if not isinstance(model, TorchModel):
        raise ModelLoadError(f"{type(model).__name__} cannot be compiled")
    model.compile(batch_size)


def guarded(
    model: LoadedModel,
    pixels: Sequence[np.ndarray],
    spec: ModelSpec,
    regions: Sequence[Any] | None,
    cfg: GuardConfig,
) -> list:
    """``predict``, with reduced precision checked by the accuracy guard (``precision.py``)."""

    def run(k: int | None) -> list:
        return predict(model, pixels[:k], spec, regions[:k] if regions is not None else None)

    return run_guarded(model, run, spec.kind, spec.name, cfg)


def predict(
    model: LoadedModel,
    pixels: Sequence[np.ndarray],
    spec: ModelSpec,
    regions: Sequence[Any] | None = None,
) -> list:
    """One result per patch: probabilities, an embedding or a ``Segmented`` class map (counted
    over each patch's tissue pixels in its ``PatchRegion`` when given)."""
    outputs = model.forward(pixels)
    if not outputs:
        raise ValueError(f"model {spec.name!r} returned no output")
    return spec.kind.results(outputs, spec, len(pixels), regions)
