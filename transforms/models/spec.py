"""Model specs, device choice, lazy loading and a Beam ``ModelHandler`` for patch classifiers.

Two ways to ship a model:
  * a ``.pt2`` program saved with ``torch.export.save`` (self-contained; the default), or
  * a ``state_dict`` file plus an importable class (``--model_class NAME=pkg.mod:Class``).

URIs may be local paths or any fsspec URL (``gs://``); a remote file is copied once per worker
process into a local cache before loading. torch is imported only inside the functions that need
it, so building or launching a pipeline imports no torch.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transforms.core.errors import ConfigError, ModelLoadError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ACTIVATIONS = ("softmax", "sigmoid", "none")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One model branch: where it is, which version, and how patches are prepared for it."""

    name: str
    uri: str
    version: str = "unversioned"
    model_class: str | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    activation: str = "softmax"
    require_gpu: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"--model name {self.name!r} must start with a letter and hold only letters, "
                "digits and underscores (at most 63): it becomes a file and table name"
            )
        if not self.uri:
            raise ConfigError(f"--model {self.name}: the URI is empty")
        if self.model_class is not None and ":" not in self.model_class:
            raise ConfigError(
                f"--model_class {self.name}={self.model_class}: expected 'package.module:Class'"
            )
        if self.model_class is None and not self.uri.endswith(".pt2"):
            raise ConfigError(
                f"--model {self.name}={self.uri}: expected a torch.export '.pt2' program, or "
                f"a state_dict with --model_class {self.name}=package.module:Class"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"--model_mean/--model_std {self.name}: need 3 values, std > 0")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"--model_activation {self.name}: one of {', '.join(ACTIVATIONS)}")

    @property
    def shared_tag(self) -> str:
        """Key of the process-wide model cache: a new version or file is a new model."""
        return f"{self.name}|{self.version}|{self.uri}|{self.model_class}"


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


def _cache_target(uri: str, cache_dir: str | None, suffix: str = "") -> str | None:
    """``None`` for a local path; else where the per-process copy of ``uri`` goes."""
    if "://" not in uri or uri.startswith("file://"):
        return None
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "pathbeam-models")
    os.makedirs(cache_dir, exist_ok=True)
    return os.path.join(cache_dir, hashlib.sha256(uri.encode()).hexdigest()[:16] + suffix)


def local_copy(uri: str, cache_dir: str | None = None) -> str:
    """A local path for a model file: itself if local, else a copy made once per process."""
    path = _cache_target(uri, cache_dir, f"-{os.path.basename(uri)}")
    if path is None:
        return uri.removeprefix("file://")
    if not os.path.exists(path):
        import fsspec

        from transforms.core.remote_io import remote_options, retry_transient

        partial = f"{path}.{os.getpid()}.partial"

        def copy() -> None:
            with fsspec.open(uri, "rb", **remote_options(uri)) as src, open(partial, "wb") as dst:
                while chunk := src.read(8 << 20):
                    dst.write(chunk)

        retry_transient(f"copying {uri}", copy)
        os.replace(partial, path)
    return path


def local_folder(uri: str, cache_dir: str | None = None) -> str:
    """A local path for a model folder: itself if local, else a copy made once per process."""
    target = _cache_target(uri, cache_dir)
    if target is None:
        return uri.removeprefix("file://")
    if not os.path.exists(os.path.join(target, ".complete")):
        import fsspec

        from transforms.core.remote_io import remote_options, retry_transient

        fs, path = fsspec.core.url_to_fs(uri, **remote_options(uri))
        partial = f"{target}.{os.getpid()}.partial"
        retry_transient(
            f"copying {uri}", lambda: fs.get(path.rstrip("/") + "/", partial, recursive=True)
        )
        open(os.path.join(partial, ".complete"), "w").close()
        try:
            os.replace(partial, target)
        except OSError:  # another process finished first
            pass
    return target


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
            module = torch.export.load(path).module()
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
