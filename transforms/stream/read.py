"""ReadNotifications: Pub/Sub subscriptions -> each slide that landed, once.

    subscriptions ──► Parse ──► (Cloud Storage) ─────────────────────┐
                            └─► (DICOM store) ──► AwaitSeries ──────┴─► FirstOfEach ──► slides
    not slides ──► ignored (counted)     malformed, incomplete series ──► dead letters

Each subscription is read under its own stable name (``Read/<subscription>``), so a stream can
be updated in place. Messages are stamped with their publish time (Pub/Sub's default), which is
the event time the series timers and the de-duplication use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import apache_beam as beam

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, dead_letter
from transforms.stream.notifications import Ignored, parse
from transforms.stream.series import MAX_WAIT_S, QUIET_S, AwaitSeries, FirstOfEach

IGNORED = "ignored"


class _Parse(beam.DoFn):
    STAGE = "ReadNotifications"

    def __init__(self, roots: dict[str, str]) -> None:
        self._roots = roots

    def process(self, message: Any, published: Any = beam.DoFn.TimestampParam) -> Iterator[Any]:
        progress.count("notifications")
        try:
            item = parse(message.data, message.attributes, published.micros / 1e6, self._roots)
        except (ValueError, UnicodeDecodeError) as exc:
            key = getattr(message, "message_id", None) or "(no message id)"
            row = {"attributes": dict(message.attributes or {}), "data": message.data[:500]}
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(self.STAGE, key, exc, row))
            return
        if isinstance(item, Ignored):
            progress.count("notifications_ignored")
            yield beam.pvalue.TaggedOutput(IGNORED, {"reason": item.reason, "uri": item.what})
            return
        yield item


class _BySource(beam.PartitionFn):
    """Cloud Storage objects (0) and DICOM instances (1)."""

    def partition_for(self, element: Any, num_partitions: int, *args: Any, **kwargs: Any) -> int:
        return 0 if element.source == "gcs" else 1


def subscription_name(path: str) -> str:
    """``projects/P/subscriptions/NAME`` -> ``NAME`` (a stage name that survives updates)."""
    return path.rsplit("/", 1)[-1]


class ReadNotifications(beam.PTransform):
    """Subscriptions -> ``Landed`` slides, each once.

    In: the pipeline. Out: a dict with ``slides`` (``notifications.Landed``), ``ignored``
    (``{reason, uri}`` of messages that announce no slide) and ``DEAD_LETTER`` rows (malformed
    messages; DICOM series still unreadable after ``max_wait_s``).
    """

    def __init__(
        self,
        subscriptions: Sequence[str],
        probe: Callable[[str], str | None],
        dicomweb_roots: dict[str, str] | None = None,
        quiet_s: float = QUIET_S,
        max_wait_s: float = MAX_WAIT_S,
    ) -> None:
        super().__init__()
        self._subscriptions = list(subscriptions)
        self._probe = probe
        self._roots = dict(dicomweb_roots or {})
        self._quiet_s = quiet_s
        self._max_wait_s = max_wait_s

    def expand(self, pipeline: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        messages = [
            pipeline
            | f"Read/{subscription_name(path)}"
            >> beam.io.ReadFromPubSub(subscription=path, with_attributes=True)
            for path in self._subscriptions
        ] | "AllMessages" >> beam.Flatten()
        parsed = messages | "Parse" >> beam.ParDo(_Parse(self._roots)).with_outputs(
            DEAD_LETTER, IGNORED, main="landed"
        )
        objects, instances = parsed.landed | "BySource" >> beam.Partition(_BySource(), 2)
        series = instances | "AwaitSeries" >> AwaitSeries(
            self._probe, self._quiet_s, self._max_wait_s
        )
        slides = (objects, series["series"]) | "AllLanded" >> beam.Flatten()
        return {
            "slides": slides | "FirstOfEach" >> FirstOfEach(),
            IGNORED: parsed[IGNORED],
            DEAD_LETTER: (parsed[DEAD_LETTER], series[DEAD_LETTER])
            | "AllDeadLetters" >> beam.Flatten(),
        }
