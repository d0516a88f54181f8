"""Patch models in torch: device choice, and the torch formats (``.pt2``, ``state_dict``,
Hugging Face vision folders) behind the one ``LoadedModel`` interface.

torch and transformers are imported only inside these functions, so building or launching a
pipeline imports neither.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from transforms.core.errors import ModelLoadError
from transforms.models.kinds.base import Outputs
from transforms.models.local_copy import local_copy, local_folder
from transforms.models.precision import Guarded, autocast
from transforms.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

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


class LoadedModel(Guarded):
    """A model ready to run on its device (a plain object, so ``Shared`` can hold a weak
    reference): ``forward`` takes ``H x W x 3`` uint8 patches and returns named float arrays,
    in its ``precision`` (``precision.Guarded``)."""

    def __init__(self, device: str, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.device = device
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def forward(self, pixels: Sequence[np.ndarray]) -> Outputs:
        raise NotImplementedError

    def normalised(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """``N x 3 x H x W`` float32: scaled to [0, 1], then ``(x - mean) / std``."""
        batch = np.stack(pixels).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        mean = np.asarray(self.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, 3, 1, 1)
        return (batch - mean) / std


def in_fixed_batches(
    batch: Any, size: int, run: Callable[[Any], Outputs], pad: Callable[[Any, int], Any]
) -> Outputs:
    """``run`` over ``batch`` in chunks of exactly ``size`` (a graph built for one batch size):
    the last chunk is padded by ``pad(chunk, short)`` and its pad dropped from every output."""
    parts = []
    for i in range(0, len(batch), size):
        chunk = batch[i : i + size]
        n = len(chunk)
        if n < size:
            chunk = pad(chunk, size - n)
        parts.append({name: value[:n] for name, value in run(chunk).items()})
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def preprocess(pixels: Sequence[np.ndarray], model: LoadedModel) -> Any:
    """Stack uint8 patches into a normalised ``N x 3 x H x W`` float tensor on the model's
    device (the uint8 batch is what crosses to a GPU: a quarter of the bytes of float32)."""
    import torch

    batch = torch.from_numpy(np.stack(pixels)).to(model.device)
    batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(model.mean, device=model.device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=model.device).view(1, 3, 1, 1)
    return batch.sub_(mean).div_(std)


def as_outputs(result: Any) -> Outputs:
    """A torch model's result (a tensor, a tuple, a dict or a Hugging Face ``ModelOutput``) as
    named float32 arrays on the CPU."""
    import torch

    if isinstance(result, torch.Tensor):
        items: list[tuple[str, Any]] = [("output", result)]
    elif isinstance(result, tuple | list):
        items = [(str(i), v) for i, v in enumerate(result)]
    elif isinstance(result, dict):  # ModelOutput is a dict too
        items = list(result.items())
    else:
        raise ValueError(f"unsupported model output type {type(result).__name__}")
    return {
        name: value.detach().float().cpu().numpy()
        for name, value in items
        if isinstance(value, torch.Tensor)
    }


class TorchModel(LoadedModel):
    """A ``.pt2`` program or a ``state_dict`` in its class: ``module(x)``, under an autocast
    when its precision is reduced (outputs are float32 either way)."""

    def __init__(self, module: Any, device: str, mean: Sequence[float], std: Sequence[float]):
        super().__init__(device, mean, std)
        self.module = module
        self.compiled: Any = None
        """With ``compile``: the compiled module, for ``compiled_for`` and ``fixed_batch``."""
        self.compiled_for = ""
        self.fixed_batch = 0

    def compile(self, batch_size: int) -> None:
        """``torch.compile`` the module for the model's precision and batches of exactly
        ``batch_size``: smaller batches are padded with zeros and larger ones split, so one
        static graph is built (at the first call, which ``PatchModelHandler.load_model`` makes
        at setup) and nothing recompiles per bundle (a dynamic-shape graph ran 20x slower on
        this CPU). Other precisions run the module eagerly: the accuracy guard's fp32 pass
        covers 32 patches, not worth a second compile."""
        import torch

        self.compiled = torch.compile(self.module, dynamic=False)
        self.compiled_for, self.fixed_batch = self.precision, batch_size

    def forward(self, pixels: Sequence[np.ndarray]) -> Outputs:
        import torch

        with torch.inference_mode(), autocast(self.device, self.precision):
            batch = preprocess(pixels, self)
            if self.compiled is None or self.precision != self.compiled_for:
                return as_outputs(self.call(self.module, batch))
            return in_fixed_batches(
                batch,
                self.fixed_batch,
                lambda chunk: as_outputs(self.call(self.compiled, chunk)),
                lambda chunk, short: torch.cat([chunk, chunk.new_zeros((short, *chunk.shape[1:]))]),
            )

    def call(self, module: Any, batch: Any) -> Any:
        return module(batch)


class HuggingFaceModel(TorchModel):
    """A ``save_pretrained`` vision folder: ``module(pixel_values=x)``."""

    def call(self, module: Any, batch: Any) -> Any:
        return module(pixel_values=batch)


def normalisation(spec: ModelSpec, folder: str | None = None) -> tuple[Sequence, Sequence]:
    """Mean and std, each from the flags; else the folder's image-processor config; else
    ImageNet's (for RGB input) or none (0 and 1, for stain channels)."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if spec.input == "eho":  # stain channels are scaled 0-1 already
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    config = os.path.join(folder, "preprocessor_config.json") if folder else None
    if config and os.path.exists(config):
        with open(config) as f:
            processor = json.load(f)
        if (
            len(processor.get("image_mean") or ()) == 3
            and len(processor.get("image_std") or ()) == 3
        ):
            mean, std = processor["image_mean"], processor["image_std"]
    return spec.mean or mean, spec.std or std


def huggingface_offline() -> None:
    """Hugging Face loads from local folders only, without progress bars or load reports in the
    job's log (a load's missing weights are checked here instead: ``load_torch``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_torch(spec: ModelSpec, device: str) -> LoadedModel:
    """A ``.pt2``, ``state_dict`` or Hugging Face model of ``spec`` on ``device``, in eval mode."""
    import torch

    if spec.format == "huggingface":
        huggingface_offline()
        import transformers

        folder = local_folder(spec.uri)
        if not os.path.exists(os.path.join(folder, "config.json")):
            raise FileNotFoundError(f"no config.json in {spec.uri}: not a save_pretrained folder")
        auto = getattr(transformers, spec.kind.hf_auto_class)
        module, info = auto.from_pretrained(folder, local_files_only=True, output_loading_info=True)
        _drop_uninitialised_pooler(module, list(info.get("missing_keys") or ()))
        return HuggingFaceModel(module.eval().to(device), device, *normalisation(spec, folder))
    if spec.format == "timm":
        from transforms.models.foundation import foundation_module

        module = foundation_module(spec)
        return TorchModel(module.to(device), device, *normalisation(spec))
    path = local_copy(spec.uri)
    if spec.format == "pt2":
        module = _quietly(lambda: torch.export.load(path)).module()
    else:
        assert spec.model_class is not None
        module_name, class_name = spec.model_class.split(":", 1)
        module = getattr(importlib.import_module(module_name), class_name)()
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        module.eval()
    return TorchModel(module.to(device), device, *normalisation(spec))


def _drop_uninitialised_pooler(module: Any, missing: list[str]) -> None:
    """Refuse weights the folder does not hold, except a pooler's.

    ``AutoModel`` builds a pooler even for an encoder saved without one (ViT backbones usually
    are) and fills it with random weights: its ``pooler_output`` would differ on every worker.
    Such a pooler is removed, so ``--embedding_key auto`` takes the CLS token; any other missing
    weight fails the load, naming them.
    """
    if not missing:
        return
    if all(key.split(".")[0] == "pooler" for key in missing) and hasattr(module, "pooler"):
        module.pooler = None
        _LOG.info("the folder holds no pooler weights: pooler_output is not used")
        return
    raise ValueError(
        f"the folder lacks weights the model needs ({', '.join(missing[:5])}"
        f"{', ...' if len(missing) > 5 else ''}); they would be random"
    )


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
