"""Reduced precision for patch models, and the guard that checks it kept the results.

``--precision NAME=fp32|bf16|fp16|auto``: an autocast around the forward pass; outputs are
float32 before activation. ``auto`` tries fp16 on CUDA and bf16 on a CPU, and keeps it only when
the guard passes **and** it measured faster than fp32 on the guard's own inputs (which run in
both precisions anyway); else the process runs fp32. CPU flags are not read: a CPU with AVX-512
BF16 and no AMX gained nothing from bf16, and only a measurement tells. ONNX graphs run as
exported (fp32): onnxruntime has no autocast, and a float16 conversion is a different graph, so
``bf16``/``fp16`` are refused for them and ``auto`` means fp32.

Text models (``--precision`` of the text pipeline) take the same autocast and the same guard, on
their first token windows: class probabilities per document or per token, and the cosine of the
summed token vectors. The guard's figures go to the log, to the job's ``guard`` output and so to
the run record and its report (``precision_guard``).

The guard runs on each worker process's **first real patches** (exactly ``GUARD_PATCHES``, in
its first batches): the model runs them in fp32 and in the reduced precision, and the output
kind (or text task) compares them (``compare``: label agreement and the largest probability
difference, the cosine similarity of embeddings, or the largest change of a class's pixel
share). Below the thresholds the process
falls back to fp32 (counted in ``precision_fallbacks``), or the job fails with
``--precision_strict``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from transforms.core import progress
from transforms.core.errors import ConfigError, ModelLoadError
from transforms.core.guard import GuardResult, merge

_LOG = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
GUARD_PATCHES = 32
"""Real patches each worker process checks in both precisions before it trusts the reduced one
(its first batches: Beam's batches start small and grow)."""


@dataclass(frozen=True)
class GuardConfig:
    """Thresholds of the accuracy guard, and whether failing it fails the job."""

    min_agreement: float = 0.99
    max_prob_diff: float = 0.02
    min_cosine: float = 0.999
    strict: bool = False

    def __post_init__(self) -> None:
        if not (0 <= self.min_agreement <= 1 and 0 <= self.max_prob_diff <= 1):
            raise ConfigError("`min_agreement` and `max_prob_diff` must be in [0, 1]")
        if not -1 <= self.min_cosine <= 1:
            raise ConfigError("`min_cosine` must be in [-1, 1]")


def check_precision(name: str, precision: str, fmt: str) -> None:
    """Refuse a precision that is not one of ``PRECISIONS``, or a reduced one for ONNX."""
    if precision not in PRECISIONS:
        raise ConfigError(f"`precision` of {name}: one of {', '.join(PRECISIONS)}")
    if fmt == "onnx" and precision in ("bf16", "fp16"):
        raise ConfigError(
            f"`precision` {name}={precision}: ONNX graphs run as exported (fp32); export the "
            "model in the precision you want, or use a .pt2 or Hugging Face model"
        )


def resolve(precision: str, device: str, fmt: str) -> str:
    """The precision a model of format ``fmt`` (checked by ``check_precision``) runs in on
    ``device``."""
    if fmt == "onnx":
        return "fp32"
    if precision != "auto":
        return precision
    return "fp16" if device == "cuda" else "bf16"


@dataclass(frozen=True)
class GuardFigures:
    """What an output kind's (or text task's) ``compare`` measured on one batch."""

    passed: bool
    agreement: float | None = None
    max_prob_diff: float | None = None
    min_cosine: float | None = None


class Comparer(Protocol):
    """An output kind or text task: how the guard compares reduced results with fp32's."""

    def compare(self, reduced: list, exact: list, cfg: GuardConfig) -> GuardFigures: ...


class Guarded:
    """A loaded model's precision and its guard's state, per worker process (mixed into the
    patch and text model classes)."""

    def __init__(self) -> None:
        self.precision = "fp32"
        """What the forward pass runs in; set by the loader, lowered to fp32 by the guard."""
        self.guard: GuardResult | None = None
        """This process's guard figures so far (its batches merged)."""
        self.guard_batches: list[GuardResult] = []
        """Each guarded batch's figures, until the model runner hands them to the job's
        ``guard`` output (``take_guard_batches``)."""
        self.lock = threading.Lock()
        self.auto = False
        """``--precision auto``: keep the reduced precision only if it measured faster."""

    def take_guard_batches(self) -> list[GuardResult]:
        with self.lock:
            out, self.guard_batches = self.guard_batches, []
        return out


MIN_SPEEDUP = 1.0
"""``auto`` keeps a reduced precision only when it ran faster than fp32 on the guard's inputs."""


def run_guarded(
    model: Guarded,
    run: Callable[[int | None], list],
    comparer: Comparer,
    name: str,
    cfg: GuardConfig,
) -> list:
    """``run(None)`` (a batch through ``model`` in its current precision), checking a reduced
    precision on the process's first ``GUARD_PATCHES`` inputs: the batches holding them also run
    their first inputs (``run(k)``: the first k) in fp32 and are compared; a failing batch turns
    the process to fp32 (or fails the job, with ``strict``). The batch that completes the check
    also times both precisions on its inputs (``speedup``), and ``auto`` turns to fp32 where the
    reduced precision was no faster."""
    if model.precision == "fp32" or (model.guard is not None and model.guard.n >= GUARD_PATCHES):
        return run(None)
    with model.lock:
        checked = model.guard.n if model.guard is not None else 0
        if model.precision == "fp32" or checked >= GUARD_PATCHES:
            return run(None)
        reduced = run(None)
        precision, model.precision = model.precision, "fp32"
        exact = run(GUARD_PATCHES - checked)
        figures = comparer.compare(reduced[: len(exact)], exact, cfg)
        done = checked + len(exact) >= GUARD_PATCHES
        batch = GuardResult(
            precision,
            len(exact),
            name,
            figures.agreement,
            figures.max_prob_diff,
            figures.min_cosine,
            figures.passed,
            _speedup(model, run, len(exact), precision) if done else None,
        )
        result = merge(model.guard, batch)
        slower = model.auto and done and (result.speedup or 0.0) < MIN_SPEEDUP
        kept = result.passed and not slower
        batch = dataclasses.replace(batch, kept=kept or not done)
        model.guard_batches.append(batch)
        model.guard = dataclasses.replace(result, kept=kept or not done)
        if kept:
            model.precision = precision
            if done:
                _LOG.info("model %s: %s", name, result.describe())
            return reduced
        if not result.passed:
            progress.count("precision_fallbacks")
            if cfg.strict:
                raise ModelLoadError(
                    f"model {name!r}: {result.describe()}; --precision_strict is set"
                )
            _LOG.warning("model %s falls back to fp32: %s", name, result.describe())
            return run(None) if len(exact) < len(reduced) else exact
        _LOG.info(
            "model %s: auto keeps fp32, %s was not faster: %s", name, precision, result.describe()
        )
        return reduced


def _speedup(model: Guarded, run: Callable[[int | None], list], k: int, precision: str) -> float:
    """fp32's time over ``precision``'s on the same ``k`` inputs, both warm: the reduced
    precision runs them once untimed first (fp32 has just run exactly them), so neither pays for
    building its kernels for this batch shape, which costs more in bf16 and would bias a cold
    measurement against it. Three extra passes over at most ``GUARD_PATCHES`` inputs, once per
    worker process."""
    timed = {}
    model.precision = precision
    run(k)
    for current in (precision, "fp32"):
        model.precision = current
        started = time.perf_counter()
        run(k)
        timed[current] = time.perf_counter() - started
    model.precision = "fp32"
    return timed["fp32"] / max(timed[precision], 1e-9)


def autocast(device: str, precision: str) -> Any:
    """The autocast a forward pass in ``precision`` runs under (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)
