"""Reduced precision for patch models, and the guard that checks it kept the results.

``--precision NAME=fp32|bf16|fp16|auto``: an autocast around the forward pass; outputs are
float32 before activation. ``auto`` is fp16 on CUDA, bf16 on a CPU with AMX or AVX-512 BF16
(read from /proc/cpuinfo's flags), else fp32. ONNX graphs run as exported (fp32): onnxruntime
has no autocast, and a float16 conversion is a different graph, so ``bf16``/``fp16`` are refused
for them and ``auto`` means fp32.

The guard runs on each worker process's **first real patches** (``GUARD_PATCHES``, in its first
batches): the model runs them in fp32 and in the reduced precision, and compares label agreement
and the largest probability difference (classification), the cosine similarity (embeddings), or
the largest change of a class's pixel share (segmentation). Below the thresholds the process
falls back to fp32 (counted in ``precision_fallbacks``), or the job fails with
``--precision_strict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from transforms.core.errors import ConfigError

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


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AMX or AVX-512 BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def resolve(precision: str, device: str, fmt: str) -> str:
    """The precision a model of format ``fmt`` runs in on ``device``."""
    if fmt == "onnx":
        if precision in ("bf16", "fp16"):
            raise ConfigError(
                f"`precision` {precision}: ONNX graphs run as exported (fp32); export the model "
                "in the precision you want, or use a .pt2 or Hugging Face model"
            )
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
    agreement: float | None = None
    max_prob_diff: float | None = None
    min_cosine: float | None = None
    passed: bool = True

    def describe(self) -> str:
        figures = ", ".join(
            f"{name} {value:.4g}"
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
        agreement if agreement is not None else later.agreement,
        worst(earlier.max_prob_diff, later.max_prob_diff, max),
        worst(earlier.min_cosine, later.min_cosine, min),
        earlier.passed and later.passed,
    )


def compare(kind: str, reduced: list, exact: list, precision: str, cfg: GuardConfig) -> GuardResult:
    """Compare a batch's results in reduced precision with the same batch in fp32."""
    n = len(exact)
    if kind == "embedding":
        a, b = np.stack(reduced).astype(np.float64), np.stack(exact).astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        worst = float(cos.min())
        return GuardResult(precision, n, min_cosine=worst, passed=worst >= cfg.min_cosine)
    if kind == "segmentation":
        a = np.stack([np.asarray(s.class_fractions) for s in reduced])
        b = np.stack([np.asarray(s.class_fractions) for s in exact])
        diff = float(np.abs(a - b).max()) if n else 0.0
        return GuardResult(
            precision, n, max_prob_diff=diff, passed=diff <= 1 - cfg.min_agreement + 1e-12
        )
    a, b = np.stack(reduced), np.stack(exact)
    agreement = float((a.argmax(1) == b.argmax(1)).mean())
    diff = float(np.abs(a - b).max())
    passed = agreement >= cfg.min_agreement and diff <= cfg.max_prob_diff
    return GuardResult(precision, n, agreement=agreement, max_prob_diff=diff, passed=passed)
