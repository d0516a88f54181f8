"""The accuracy guard's figures as data: one ``GuardResult`` per guarded batch, merged per model.

The guard itself (``models/precision.py``) runs a reduced precision beside fp32 and measures;
what it measured travels as rows of a pipeline's ``GUARD`` output into the run record
(``io/record_run.py``), which merges them per model over every worker process. Both sides
share this file, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

GUARD = "guard"
"""The key of the guard's rows (one per guarded batch) among a pipeline's outputs."""


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
    speedup: float | None = None
    """fp32's time over the reduced precision's on the guard's last inputs, both warm."""
    kept: bool = True
    """Whether the process kept the reduced precision (false: it runs fp32)."""

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
        speed = f", {self.speedup:.2f}x fp32's speed" if self.speedup is not None else ""
        return f"{self.precision} guard {verdict} on {self.n} inputs: {figures}{speed}"


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
        worst(earlier.speedup, later.speedup, min),
        earlier.kept and later.kept,
    )


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
