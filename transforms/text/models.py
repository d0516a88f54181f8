"""Hugging Face text models: specs, offline loading, and one padded forward pass per task.

A model is a folder written by ``save_pretrained`` (local or any fsspec URL; a remote folder is
copied once per worker process to a local cache). Nothing is fetched from a hub:
``HF_HUB_OFFLINE=1`` and ``local_files_only=True``. transformers and torch are imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transforms.core.errors import ConfigError, ModelLoadError
from transforms.models.local_copy import local_folder
from transforms.models.precision import Guarded, autocast, resolve
from transforms.models.spec import ModelRef
from transforms.models.torch_models import huggingface_offline
from transforms.text.tasks import TASKS, task


@dataclass(frozen=True)
class TextModelSpec(ModelRef):
    """One text model branch: a Hugging Face folder and its task (``tasks.py``)."""

    task: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in TASKS:
            raise ConfigError(f"`task` {self.name}={self.task}: one of {', '.join(TASKS)}")

    @property
    def shared_tag(self) -> str:
        return f"{self.name}|{self.version}|{self.uri}|{self.task}"


class LoadedTextModel(Guarded):
    """Tokenizer, model, device and precision (a plain object, so ``Shared`` can hold a weak
    reference)."""

    def __init__(self, tokenizer: Any, model: Any, device: str, spec: TextModelSpec) -> None:
        super().__init__()
        self.precision = resolve(spec.precision, device, "huggingface")
        self.auto = spec.precision == "auto"
        self.tokenizer = tokenizer
        self.model = model
        self.device = device
        self.spec = spec
        config = getattr(model, "config", None)
        self.id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
        self.multi_label = getattr(config, "problem_type", None) == "multi_label_classification"


def load_tokenizer(spec: TextModelSpec) -> Any:
    huggingface_offline()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(local_folder(spec.uri), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"tokenizer of model {spec.name!r} could not be loaded from {spec.uri}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            f"model {spec.name!r}: a fast tokenizer (tokenizer.json) is needed for offsets"
        )
    return tokenizer


def load_text_model(spec: TextModelSpec) -> LoadedTextModel:
    """Load tokenizer and model for ``spec.task`` onto the chosen device, in eval mode."""
    huggingface_offline()
    import transformers

    from transforms.models.torch_models import select_device

    try:
        device = select_device(spec.require_gpu)
    except ModelLoadError as exc:
        raise ModelLoadError(f"model {spec.name!r} from {spec.uri}: {exc}") from exc
    auto = getattr(transformers, task(spec.task).hf_auto_class)
    tokenizer = load_tokenizer(spec)
    try:
        model = auto.from_pretrained(local_folder(spec.uri), local_files_only=True)
        model = model.to(device).eval()
    except Exception as exc:
        raise ModelLoadError(
            f"model {spec.name!r} ({spec.task}) could not be loaded from {spec.uri}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return LoadedTextModel(tokenizer, model, device, spec)


def forward(loaded: LoadedTextModel, windows: Sequence[list[int]]) -> list[np.ndarray]:
    """One forward pass over windows of token ids, padded to the longest; one array per window,
    as the model's task says (``tasks.py``)."""
    import torch

    longest = max(len(w) for w in windows)
    pad = loaded.tokenizer.pad_token_id or 0
    ids = torch.full((len(windows), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(windows), longest), dtype=torch.long)
    for i, w in enumerate(windows):
        ids[i, : len(w)] = torch.tensor(w)
        mask[i, : len(w)] = 1
    ids, mask = ids.to(loaded.device), mask.to(loaded.device)
    with torch.inference_mode():
        with autocast(loaded.device, loaded.precision):
            out = loaded.model(input_ids=ids, attention_mask=mask)
        return task(loaded.spec.task).window_outputs(loaded, out, mask, [len(w) for w in windows])
