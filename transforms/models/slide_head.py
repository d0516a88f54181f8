"""Slide-level heads: one call over all of a slide's patch embeddings.

The contract (``.pt2`` from ``torch.export``, or ONNX):

- inputs, in order: ``features`` ``(1, N, D)`` float32; ``coords`` ``(1, N, 2)`` int64, each
  patch's level-0 top-left corner; ``patch_size`` ``()`` int64, the patch edge at level 0. An
  ONNX graph that does not use ``coords`` or ``patch_size`` may leave them out (``torch.onnx``
  drops unused inputs); they are fed in that order, as many as it takes.
- outputs: logits ``(1, C)`` first; then, where the model gives them, attention scores per patch
  (``(1, N)``, ``(N,)``, ``(1, N, 1)`` or ``(1, 1, N)``). Scores that are not already weights
  (non-negative, summing to 1) are turned into weights with a softmax over the slide's patches.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from transforms.core.errors import ModelLoadError
from transforms.models.local_copy import local_copy, local_copy_with
from transforms.models.onnx_models import providers
from transforms.models.torch_models import select_device

HEAD_FORMATS = (".pt2", ".onnx")


def head_format(uri: str) -> str:
    """``pt2`` or ``onnx``, from the file's suffix; ``ModelLoadError`` otherwise."""
    for suffix in HEAD_FORMATS:
        if uri.endswith(suffix):
            return suffix[1:]
    raise ModelLoadError(f"{uri}: a slide head is a .pt2 (torch.export) or .onnx file")


class SlideHead:
    """A loaded head: ``__call__(features (N, D), coords (N, 2), patch_size)`` -> (logits
    ``(C,)``, attention weights ``(N,)`` or None)."""

    def __init__(self, uri: str, require_gpu: bool = False) -> None:
        self.uri = uri
        self.format = head_format(uri)
        if self.format == "pt2":
            import torch

            self.device = select_device(require_gpu)
            self._module = torch.export.load(local_copy(uri)).module().to(self.device)
        else:
            import onnxruntime as ort

            path = local_copy_with(uri, (".data",))
            self._session = ort.InferenceSession(path, providers=providers(require_gpu))
            self._inputs = [i.name for i in self._session.get_inputs()]
            self.device = "cuda" if "CUDA" in self._session.get_providers()[0] else "cpu"

    def _outputs(self, features: np.ndarray, coords: np.ndarray, size: int) -> list[np.ndarray]:
        fed = [features[None], coords[None], np.asarray(size, np.int64)]
        if self.format == "onnx":
            values = self._session.run(None, dict(zip(self._inputs, fed, strict=False)))
            return [np.asarray(v, np.float32) for v in values]
        import torch

        with torch.inference_mode():
            out = self._module(
                *(torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in fed)
            )
        if isinstance(out, dict):
            out = list(out.values())
        elif not isinstance(out, list | tuple):
            out = [out]
        return [o.detach().float().cpu().numpy() for o in out]

    def __call__(
        self, features: np.ndarray, coords: np.ndarray, patch_size: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        n = len(features)
        outputs = self._outputs(features.astype(np.float32), coords.astype(np.int64), patch_size)
        logits = outputs[0].reshape(-1)
        attention = None
        if len(outputs) > 1:
            scores = outputs[1].reshape(-1)
            if scores.size != n:
                raise ValueError(
                    f"{os.path.basename(self.uri)}: attention output {outputs[1].shape} does "
                    f"not have one score per patch ({n})"
                )
            attention = as_weights(scores)
        return logits, attention


def as_weights(scores: np.ndarray) -> np.ndarray:
    """Attention scores as weights summing to 1: themselves if they already are, else their
    softmax."""
    s = scores.astype(np.float64)
    if (s >= 0).all() and abs(s.sum() - 1.0) < 1e-4:
        return s
    e = np.exp(s - s.max())
    return e / e.sum()


def load_head(uri: str, require_gpu: bool = False) -> Any:
    return SlideHead(uri, require_gpu)
