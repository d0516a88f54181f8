"""Length-sorted, token-budget batches with dynamic padding, in bounded memory.

Why our own transform: Beam 2.77's ``SortAndBatchElements`` buffers a whole bundle before sorting
(on the local runner a bundle is the whole PCollection, millions of sentences) and budgets the SUM
of element sizes, while the cost of a padded batch is ``longest x count``. ``BatchElements`` with
``length_fn``/``bucket_boundaries`` only buckets in streaming with ``max_batch_duration_secs``, and
``ModelHandler(max_batch_weight=...)`` raises TypeError in 2.77. Here a buffer of at most
``buffer_size`` elements is sorted longest first and cut so that ``longest x count`` stays within
``max_tokens_per_batch`` and padding within ``max_padding`` of each batch; each batch is later
padded only to its own longest member.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core.errors import ConfigError
from transforms.core.progress import NAMESPACE

T = TypeVar("T")


@dataclass(frozen=True)
class TokenBatchingConfig:
    """Token-budget batching of variable-length inputs."""

    max_tokens_per_batch: int = 8192
    max_batch_size: int = 64
    buffer_size: int = 2048
    max_padding: float = 0.1

    def __post_init__(self) -> None:
        if self.max_tokens_per_batch < 1 or self.max_batch_size < 1 or self.buffer_size < 1:
            raise ConfigError(
                "`max_tokens_per_batch`, `max_batch_size` and `buffer_size` must be >= 1"
            )
        if not 0.0 <= self.max_padding < 1.0:
            raise ConfigError(f"`max_padding` must be in [0, 1), got {self.max_padding}")


def token_budget_batches(
    items: Sequence[T],
    length: Callable[[T], int],
    max_tokens: int,
    max_size: int,
    max_padding: float = 1.0,
) -> list[list[T]]:
    """Sort ``items`` longest first and cut batches with ``longest x count <= max_tokens``, at
    most ``max_size`` items, and a padded share of at most ``max_padding``.

    An item longer than ``max_tokens`` on its own forms a batch of one.
    """
    ordered = sorted(items, key=length, reverse=True)
    batches: list[list[T]] = []
    current: list[T] = []
    longest = real = 0
    for item in ordered:
        n = length(item)
        if current:
            # Sorted longest first, so the batch's first item is its longest.
            padded = longest * (len(current) + 1)
            if (
                len(current) >= max_size
                or padded > max_tokens
                or (padded - real - n) / padded > max_padding
            ):
                batches.append(current)
                current = []
        if not current:
            longest, real = n, 0
        current.append(item)
        real += n
    if current:
        batches.append(current)
    return batches


def padded_tokens(lengths: Sequence[int]) -> int:
    """Positions of a batch padded to its longest member (what it costs the model)."""
    return max(lengths) * len(lengths) if lengths else 0


class _SortAndBatch(beam.DoFn):
    def __init__(self, cfg: TokenBatchingConfig, length: Callable[[Any], int]) -> None:
        self._cfg = cfg
        self._length = length
        self._buffer: list[Any] = []
        self._padded = Metrics.counter(NAMESPACE, "padded_tokens")
        self._real = Metrics.counter(NAMESPACE, "real_tokens")
        self._sizes = Metrics.distribution(NAMESPACE, "batch_size")
        self._tokens = Metrics.distribution(NAMESPACE, "tokens_per_batch")

    def start_bundle(self) -> None:
        self._buffer = []

    def process(self, element: Any) -> Iterator[list[Any]]:
        self._buffer.append(element)
        if len(self._buffer) >= self._cfg.buffer_size:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[Any]:
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        for batch in self._flush():
            yield WindowedValue(batch, GlobalWindow().max_timestamp(), (GlobalWindow(),))

    def _flush(self) -> Iterator[list[Any]]:
        cfg = self._cfg
        batches = token_budget_batches(
            self._buffer,
            self._length,
            cfg.max_tokens_per_batch,
            cfg.max_batch_size,
            cfg.max_padding,
        )
        self._buffer = []
        for batch in batches:
            lengths = [self._length(x) for x in batch]
            padded = padded_tokens(lengths)
            self._padded.inc(padded - sum(lengths))
            self._real.inc(sum(lengths))
            self._sizes.update(len(batch))
            self._tokens.update(padded)
            yield batch


class SortAndBatchByTokens(beam.PTransform):
    """Elements -> lists of elements, sorted by length within a bounded buffer, under a budget.

    ``length`` must be a picklable callable (a module-level function). Works in the global window
    (batch pipelines); counters ``padded_tokens``/``real_tokens`` give the padding fraction.
    """

    def __init__(self, cfg: TokenBatchingConfig, length: Callable[[Any], int]) -> None:
        super().__init__()
        self._cfg = cfg
        self._length = length

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "SortAndBatch" >> beam.ParDo(_SortAndBatch(self._cfg, self._length))
