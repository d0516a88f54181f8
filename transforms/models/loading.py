"""Loading any patch model and running a batch through it: the one entry point for every format.

``load_model`` picks the loader from ``ModelSpec.format`` (``.pt2``, ``state_dict``, Hugging Face
folder: torch; ``.onnx``: onnxruntime) and wraps every failure in a ``ModelLoadError`` naming the
model, its version, the URI and the cause. ``predict`` turns a batch into one result per patch of
the model's output kind (``outputs.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from transforms.core.errors import ModelLoadError
from transforms.models.outputs import model_outputs
from transforms.models.spec import ModelSpec
from transforms.models.torch_models import LoadedModel, select_device

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
    _LOG.info(
        "loaded model %s version %s (%s, %s) on %s",
        spec.name,
        spec.version,
        spec.format,
        spec.output_kind,
        model.device,
    )
    return model


def predict(model: LoadedModel, pixels: Sequence[np.ndarray], spec: ModelSpec) -> list:
    """One result per patch: probabilities, an embedding or a ``Segmented`` class map."""
    return model_outputs(model.forward(pixels), spec, len(pixels))
