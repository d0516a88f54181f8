"""Reduced precision for patch models, and the guard that checks it kept the results.

``--precision NAME=fp32|bf16|fp16|auto``: an autocast around the forward pass; outputs are
float32 before activation. ``auto`` is fp16 on CUDA, bf16 on a CPU with AMX or AVX-512 BF16
(read from /proc/cpuinfo's flags), else fp32. ONNX graphs run as exported (fp32): onnxruntime
has no autocast, and a float16 conversion is a different graph, so ``bf16``/``fp16`` are refused
for them and ``auto`` means fp32.

Text models (``--precision`` of the text pipeline) take the same autocast and the same guard, on
their first token windows: class probabilities per document or per token, and the cosine of the
summed token vectors. The guard's figures go to the log, to the job's ``guard`` output and so to
the run record and its report (``precision_guard``).

The guard runs on each worker process's **first real patches** (``GUARD_PATCHES``, in its first
batches): the model runs them in fp32 and in the reduced precision, and compares label agreement
and the largest probability difference (classification), the cosine similarity (embeddings), or
the largest change of a class's pixel share (segmentation). Below the thresholds the process
falls back to fp32 (counted in ``precision_fallbacks``), or the job fails with
``--precision_strict``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from transforms.core import progress
from transforms.core.errors import ConfigError, ModelLoadError

_LOG = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
GUARD = "guard"
"""The key of the guard's rows (one per guarded batch) among a pipeline's outputs."""
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


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AMX or AVX-512 BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


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
    if device == "cuda":
        return "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


@dataclass(frozen=True)
class GuardResult:
    """What the guard measured on one batch, and whether it passed."""

    precision: str
    n: int
    model: str = ""
    agreement: float | None = None
    max_prob_diff: float | None = None
    min_cosine: float | None = None
    passed: bool = True

    def describe(self) -> str:
        figures = ", ".join(
            f"{name} {value:.6g}"
            for name, value in (
                ("label agreement", self.agreement),
                ("max prob diff", self.max_prob_diff),
                ("min cosine", self.min_cosine),
            )
            if value is not None
        )
        verdict = "passed" if self.passed else "FAILED"
        return f"{self.precision} guard {verdict} on {self.n} patches: {figures}"


def merge(earlier: GuardResult | None, later: GuardResult) -> GuardResult:
    """The guard's figures over both batches: counts add, the worst figure wins."""
    if earlier is None:
        return later

    def worst(a: float | None, b: float | None, pick: Any) -> float | None:
        return b if a is None else a if b is None else pick(a, b)

    n = earlier.n + later.n
    agreement = None
    if earlier.agreement is not None and later.agreement is not None:
        agreement = (earlier.agreement * earlier.n + later.agreement * later.n) / n
    return GuardResult(
        later.precision,
        n,
        later.model,
        agreement if agreement is not None else later.agreement,
        worst(earlier.max_prob_diff, later.max_prob_diff, max),
        worst(earlier.min_cosine, later.min_cosine, min),
        earlier.passed and later.passed,
    )


def compare(
    kind: str, reduced: list, exact: list, precision: str, cfg: GuardConfig, model: str = ""
) -> GuardResult:
    """Compare a batch's results in reduced precision with the same batch in fp32.

    ``kind``: a patch model's output kind, or a text task (``token-classification`` compares
    every token's probabilities; the text ``embedding``'s last value, its token count, is left
    out of the cosine).
    """
    n = len(exact)
    if kind in ("embedding", "text-embedding"):
        a, b = np.stack(reduced).astype(np.float64), np.stack(exact).astype(np.float64)
        if kind == "text-embedding":
            a, b = a[:, :-1], b[:, :-1]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        worst = float(cos.min())
        return GuardResult(precision, n, model, min_cosine=worst, passed=worst >= cfg.min_cosine)
    if kind == "segmentation":
        a = np.stack([np.asarray(s.class_fractions) for s in reduced])
        b = np.stack([np.asarray(s.class_fractions) for s in exact])
        diff = float(np.abs(a - b).max()) if n else 0.0
        return GuardResult(
            precision, n, model, max_prob_diff=diff, passed=diff <= 1 - cfg.min_agreement + 1e-12
        )
    if kind == "token-classification":  # one row per token
        a, b = np.concatenate(reduced), np.concatenate(exact)
    else:
        a, b = np.stack(reduced), np.stack(exact)
    agreement = float((a.argmax(1) == b.argmax(1)).mean())
    diff = float(np.abs(a - b).max())
    passed = agreement >= cfg.min_agreement and diff <= cfg.max_prob_diff
    return GuardResult(precision, n, model, agreement, diff, passed=passed)


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

    def take_guard_batches(self) -> list[GuardResult]:
        with self.lock:
            out, self.guard_batches = self.guard_batches, []
        return out


def guard_row(result: GuardResult) -> dict:
    """One guarded batch as a row of the job's ``guard`` output."""
    return asdict(result)


def per_model(rows: list[dict]) -> list[GuardResult]:
    """The ``guard`` rows of a whole job, merged per model (counts add, the worst wins)."""
    merged: dict[str, GuardResult] = {}
    for row in rows:
        result = GuardResult(**row)
        merged[result.model] = merge(merged.get(result.model), result)
    return [merged[name] for name in sorted(merged)]


def run_guarded(
    model: Guarded, run: Callable[[], list], kind: str, name: str, cfg: GuardConfig
) -> list:
    """``run()`` (a batch through ``model`` in its current precision), checking a reduced
    precision on the process's first ``GUARD_PATCHES`` inputs: each of their batches runs in
    both precisions and is compared; a failing batch turns the process to fp32 (or fails the
    job, with ``strict``)."""
    if model.precision == "fp32" or (model.guard is not None and model.guard.n >= GUARD_PATCHES):
        return run()
    with model.lock:
        if model.precision == "fp32" or (model.guard and model.guard.n >= GUARD_PATCHES):
            return run()
        reduced = run()
        precision, model.precision = model.precision, "fp32"
        exact = run()
        batch = compare(kind, reduced, exact, precision, cfg, name)
        model.guard_batches.append(batch)
        result = model.guard = merge(model.guard, batch)
        if result.passed:
            model.precision = precision
            if result.n >= GUARD_PATCHES:
                _LOG.info("model %s: %s", name, result.describe())
            return reduced
        progress.count("precision_fallbacks")
        if cfg.strict:
            raise ModelLoadError(f"model {name!r}: {result.describe()}; --precision_strict is set")
        _LOG.warning("model %s falls back to fp32: %s", name, result.describe())
        return exact


def autocast(device: str, precision: str) -> Any:
    """The autocast a forward pass in ``precision`` runs under (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)
