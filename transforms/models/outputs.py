"""A model's raw outputs -> what each output kind writes, one rule per kind, for every format.

Every model format hands its outputs over as named float arrays (``Outputs``: a tensor is
``{"output": ...}``, a tuple ``{"0": ..., "1": ...}``, a Hugging Face model output its fields, an
ONNX graph its output names). From them:

* ``classification``: ``N x C`` logits (``logits`` if named so, else the first output) -> class
  probabilities through the activation;
* ``embedding``: ``N x D`` vectors (``EMBEDDING_KEYS`` says which output and how to pool tokens);
* ``segmentation``: ``N x C x h x w`` logits -> per patch, the share of its pixels that are
  tissue whose most likely class is ``c`` (``class_fractions``; they add up to the patch's
  tissue share, by its slide's tissue rule), and those pixels counted at the map's resolution
  (``argmax_counts``).

A shape that does not fit raises ``ValueError`` naming the model, the shape and what was expected:
at setup (the check batch) that fails the job; later, it is one patch's dead letter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from transforms.models.spec import ModelSpec

Outputs = dict[str, np.ndarray]
CLASS_GRID = 16


@dataclass(frozen=True)
class Segmented:
    """One patch's class map, summarised: per class, the share of the patch's pixels that are
    tissue of that class, and their count; and the patch's tissue share."""

    class_fractions: np.ndarray
    argmax_counts: np.ndarray
    tissue_fraction: float
    class_grid: np.ndarray
    """The class map sampled at ``CLASS_GRID`` x ``CLASS_GRID`` points (-1: not tissue): what
    the slide's class-map picture is drawn from."""

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


def segmentation(
    outputs: Outputs, spec: ModelSpec, n: int, tissue: Sequence[np.ndarray | None] | None = None
) -> list[Segmented]:
    name, logits = _first(outputs, "logits")
    if logits.ndim != 4 or logits.shape[0] != n or logits.shape[1] < 2:
        raise _shape_error(spec, name, logits.shape, f"({n}, n_classes >= 2, h, w) logits")
    n_classes, h, w = logits.shape[1:]
    probs = activate(logits, spec.activation)
    # A patch with a non-finite value gets NaN fractions, so it becomes a dead letter (the
    # runner's finiteness check), not a class map of class 0 (the argmax of NaN).
    bad = ~np.isfinite(probs).reshape(n, -1).all(axis=1)
    labels = np.nan_to_num(probs, nan=0.0).argmax(axis=1)
    out = []
    for i in range(n):
        mask = _at_map_size(tissue[i], h, w) if tissue is not None else None
        counted = labels[i][mask] if mask is not None else labels[i].ravel()
        counts = np.bincount(counted, minlength=n_classes)
        fractions = counts / (h * w)
        out.append(
            Segmented(
                np.full(n_classes, np.nan) if bad[i] else fractions,
                counts,
                float(counted.size / (h * w)),
                _grid(labels[i], mask),
            )
        )
    return out


def _grid(labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``labels`` (h x w) at ``CLASS_GRID`` x ``CLASS_GRID`` cell centres, -1 off tissue."""
    h, w = labels.shape
    k = min(CLASS_GRID, h, w)
    rows = ((np.arange(k) + 0.5) * h / k).astype(int)
    cols = ((np.arange(k) + 0.5) * w / k).astype(int)
    grid = labels[np.ix_(rows, cols)].astype(np.int64)
    if mask is not None:
        grid[~mask[np.ix_(rows, cols)]] = -1
    return grid


def _at_map_size(mask: np.ndarray | None, h: int, w: int) -> np.ndarray | None:
    """A patch's tissue mask sampled (nearest) at the class map's resolution."""
    if mask is None:
        return None
    rows = (np.arange(h) * mask.shape[0] // h).clip(0, mask.shape[0] - 1)
    cols = (np.arange(w) * mask.shape[1] // w).clip(0, mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


KINDS: dict[str, Callable[..., list]] = {
    "classification": classification,
    "embedding": embedding,
    "segmentation": segmentation,
}


def model_outputs(
    outputs: Outputs, spec: ModelSpec, n: int, tissue: Sequence[np.ndarray | None] | None = None
) -> list:
    """One result per patch of the batch, as ``spec.output_kind`` says (a segmentation counts
    each patch's ``tissue`` pixels only, when given)."""
    if not outputs:
        raise ValueError(f"model {spec.name!r} returned no output")
    if spec.output_kind == "segmentation":
        return segmentation(outputs, spec, n, tissue)
    return KINDS[spec.output_kind](outputs, spec, n)
