"""Patch classifiers in torch: device choice, loading (``.pt2`` or ``state_dict``), prediction.

torch is imported only inside these functions, so building or launching a pipeline imports none.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from transforms.core.errors import ModelLoadError
from transforms.models.local_copy import local_copy
from transforms.models.spec import ModelSpec

_LOG = logging.getLogger(__name__)


def select_device(require_gpu: bool) -> str:
    """``cuda`` when a GPU is visible, else ``cpu``; with ``require_gpu``, no silent fallback."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if require_gpu:
        raise ModelLoadError(
            "--require_gpu is set but torch sees no CUDA device on this worker "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); check the "
            "worker image and --dataflow_service_options=worker_accelerator=..."
        )
    return "cpu"


class LoadedModel:
    """A model on its device (a plain object, so ``Shared`` can hold a weak reference)."""

    def __init__(self, module: Any, device: str) -> None:
        self.module = module
        self.device = device


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load ``spec`` onto the chosen device in eval mode.

    Raises:
      ModelLoadError: naming the model, the URI and the cause (fatal for the job).
    """
    import torch

    try:
        device = select_device(spec.require_gpu)
    except ModelLoadError as exc:
        raise ModelLoadError(f"model {spec.name!r} from {spec.uri}: {exc}") from exc
    try:
        path = local_copy(spec.uri)
        if spec.model_class is None:
            module = _quietly(lambda: torch.export.load(path)).module()
        else:
            module_name, class_name = spec.model_class.split(":", 1)
            module = getattr(importlib.import_module(module_name), class_name)()
            state = torch.load(path, map_location="cpu", weights_only=True)
            module.load_state_dict(state)
            module.eval()
        module = module.to(device)
    except Exception as exc:
        raise ModelLoadError(
            f"model {spec.name!r} (version {spec.version}) could not be loaded from {spec.uri}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    _LOG.info("loaded model %s version %s on %s", spec.name, spec.version, device)
    return LoadedModel(module, device)


def preprocess(pixels: Sequence[np.ndarray], spec: ModelSpec, device: str) -> Any:
    """Stack ``H x W x 3`` uint8 patches into a normalised ``N x 3 x H x W`` float tensor."""
    import torch

    batch = torch.from_numpy(np.stack(pixels)).to(device)
    batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    return batch.sub_(mean).div_(std)


def predict_probs(model: LoadedModel, pixels: Sequence[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """Class probabilities ``N x C`` (float32) for a batch of patches."""
    import torch

    with torch.inference_mode():
        logits = model.module(preprocess(pixels, spec, model.device))
        if isinstance(logits, tuple | list):
            logits = logits[0]
        if logits.ndim != 2 or logits.shape[0] != len(pixels):
            raise ValueError(
                f"model {spec.name!r} returned shape {tuple(logits.shape)}; expected "
                f"({len(pixels)}, n_classes) logits"
            )
        if spec.activation == "softmax":
            logits = torch.softmax(logits.float(), dim=1)
        elif spec.activation == "sigmoid":
            logits = torch.sigmoid(logits.float())
        return logits.float().cpu().numpy()


def _quietly(load: Any) -> Any:
    """``load()``, without torch.export's logged traceback of a failed load: the
    ``ModelLoadError`` raised for it already says the model, the URI and the cause."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return load()
    finally:
        logger.setLevel(level)
