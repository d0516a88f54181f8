"""A model's raw outputs -> what each output kind writes, one rule per kind, for every format.

Every model format hands its outputs over as named float arrays (``Outputs``: a tensor is
``{"output": ...}``, a tuple ``{"0": ..., "1": ...}``, a Hugging Face model output its fields, an
ONNX graph its output names). From them:

* ``classification``: ``N x C`` logits (``logits`` if named so, else the first output) -> class
  probabilities through the activation;
* ``embedding``: ``N x D`` vectors (``EMBEDDING_KEYS`` says which output and how to pool tokens);
* ``segmentation``: ``N x C x h x w`` logits -> per patch, the share of its pixels whose most
  likely class is ``c`` (``class_fractions``) and their count (``argmax_counts``).

A shape that does not fit raises ``ValueError`` naming the model, the shape and what was expected:
at setup (the check batch) that fails the job; later, it is one patch's dead letter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from transforms.models.spec import ModelSpec

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Segmented:
    """One patch's class map, summarised: pixel share and pixel count per class."""

    class_fractions: np.ndarray
    argmax_counts: np.ndarray

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: ANN001 - numpy protocol
        """The fractions: what the finiteness check and the summaries look at."""
        return np.asarray(self.class_fractions, dtype=dtype)


def activate(logits: np.ndarray, activation: str, axis: int = 1) -> np.ndarray:
    """``softmax`` or ``sigmoid`` over ``axis`` (``none``: as they are), in float32."""
    x = logits.astype(np.float32, copy=False)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    return x


def _first(outputs: Outputs, preferred: str) -> tuple[str, np.ndarray]:
    if preferred in outputs:
        return preferred, outputs[preferred]
    name = next(iter(outputs))
    return name, outputs[name]


def _shape_error(spec: ModelSpec, name: str, shape: tuple, expected: str) -> ValueError:
    return ValueError(
        f"model {spec.name!r} ({spec.output_kind}) returned {name!r} of shape {shape}; expected "
        f"{expected}"
    )


def classification(outputs: Outputs, spec: ModelSpec, n: int) -> list[np.ndarray]:
    name, logits = _first(outputs, "logits")
    if logits.ndim != 2 or logits.shape[0] != n:
        raise _shape_error(spec, name, logits.shape, f"({n}, n_classes) logits")
    return list(activate(logits, spec.activation))


def embedding(outputs: Outputs, spec: ModelSpec, n: int) -> list[np.ndarray]:
    key = spec.embedding_key
    if key not in ("auto", "pooler", "cls", "mean"):
        if key not in outputs:
            raise ValueError(
                f"model {spec.name!r}: --embedding_key {spec.name}={key} names no output; it "
                f"has {', '.join(sorted(outputs))}"
            )
        name, vectors = key, outputs[key]
    elif key == "pooler" or (key == "auto" and "pooler_output" in outputs):
        if "pooler_output" not in outputs:
            raise ValueError(
                f"model {spec.name!r}: --embedding_key {spec.name}=pooler, but it has no "
                f"pooler_output (it has {', '.join(sorted(outputs))}); use cls or mean"
            )
        name, vectors = "pooler_output", outputs["pooler_output"]
    else:
        name, vectors = _first(outputs, "last_hidden_state")
        if vectors.ndim == 3 and key in ("auto", "cls"):
            vectors = vectors[:, 0]
        elif vectors.ndim == 3 and key == "mean":
            vectors = vectors.mean(axis=1)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise _shape_error(spec, name, vectors.shape, f"({n}, dim) vectors")
    return list(vectors.astype(np.float32, copy=False))


def segmentation(outputs: Outputs, spec: ModelSpec, n: int) -> list[Segmented]:
    name, logits = _first(outputs, "logits")
    if logits.ndim != 4 or logits.shape[0] != n or logits.shape[1] < 2:
        raise _shape_error(spec, name, logits.shape, f"({n}, n_classes >= 2, h, w) logits")
    n_classes = logits.shape[1]
    probs = activate(logits, spec.activation)
    # A patch with a non-finite value gets NaN fractions, so it becomes a dead letter (the
    # runner's finiteness check), not a class map of class 0 (the argmax of NaN).
    bad = ~np.isfinite(probs).reshape(n, -1).all(axis=1)
    labels = np.nan_to_num(probs, nan=0.0).argmax(axis=1).reshape(n, -1)
    counts = np.stack([np.bincount(row, minlength=n_classes) for row in labels])
    pixels = labels.shape[1]
    return [
        Segmented(np.full(n_classes, np.nan) if bad[i] else counts[i] / pixels, counts[i])
        for i in range(n)
    ]


KINDS: dict[str, Callable[[Outputs, ModelSpec, int], list]] = {
    "classification": classification,
    "embedding": embedding,
    "segmentation": segmentation,
}


def model_outputs(outputs: Outputs, spec: ModelSpec, n: int) -> list:
    """One result per patch of the batch, as ``spec.output_kind`` says."""
    if not outputs:
        raise ValueError(f"model {spec.name!r} returned no output")
    return KINDS[spec.output_kind](outputs, spec, n)
