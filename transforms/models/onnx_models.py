"""ONNX graphs through onnxruntime, behind the one ``LoadedModel`` interface.

One session per worker process (the DoFn loads through ``Shared``), on the CUDA provider when
onnxruntime has one (``onnxruntime-gpu``) and the CPU provider otherwise. The graph's first input
names the patch batch; a fixed batch dimension is served in chunks of that size (the last one
padded). A graph whose
input is not an ``N x 3 x H x W`` float image fails at load. onnxruntime is imported here only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from transforms.core.errors import ModelLoadError
from transforms.models.kinds.base import Outputs
from transforms.models.local_copy import local_copy_with
from transforms.models.spec import ModelSpec
from transforms.models.torch_models import LoadedModel, in_fixed_batches, normalisation

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def providers(require_gpu: bool) -> list[str]:
    """CUDA first where onnxruntime offers it; with ``require_gpu``, no silent CPU fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA in available:
        return [CUDA, CPU]
    if require_gpu:
        raise ModelLoadError(
            f"--require_gpu is set but onnxruntime {ort.__version__} offers no CUDA provider "
            f"(it has {', '.join(available)}); install onnxruntime-gpu in the worker image"
        )
    return [CPU]


class OnnxModel(LoadedModel):
    def __init__(self, session: Any, mean: Sequence[float], std: Sequence[float]) -> None:
        device = "cuda" if CUDA in session.get_providers() else "cpu"
        super().__init__(device, mean, std)
        self.session = session
        image = session.get_inputs()[0]
        self.input_name = image.name
        batch = image.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.output_names = [o.name for o in session.get_outputs()]

    def forward(self, pixels: Sequence[np.ndarray]) -> Outputs:
        x = self.normalised(pixels)
        return in_fixed_batches(
            x,
            self.fixed_batch or len(x),
            lambda chunk: {
                name: np.asarray(o, np.float32)
                for name, o in zip(self.output_names, self._run(chunk), strict=True)
            },
            lambda chunk, short: np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)]),
        )

    def _run(self, batch: np.ndarray) -> list:
        return self.session.run(None, {self.input_name: batch})


def check_image_input(session: Any, uri: str) -> None:
    """Raise ``ValueError`` unless the graph's first input is an ``N x 3 x H x W`` float image."""
    inputs = session.get_inputs()
    image = inputs[0]
    shape = list(image.shape)
    if len(inputs) != 1 or len(shape) != 4 or shape[1] not in (3, "3") or "float" not in image.type:
        described = ", ".join(f"{i.name} {i.type} {list(i.shape)}" for i in inputs)
        raise ValueError(
            f"the graph's input is not one N x 3 x H x W float image: it takes {described}"
        )


def load_onnx(spec: ModelSpec) -> OnnxModel:
    import onnxruntime as ort

    path = local_copy_with(spec.uri, (".data",))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about graph optimisation
    session = ort.InferenceSession(path, options, providers=providers(spec.require_gpu))
    check_image_input(session, spec.uri)
    return OnnxModel(session, *normalisation(spec))
