"""Slides that land once: duplicate notifications dropped, and DICOM series processed when whole.

- ``FirstOfEach``: Pub/Sub delivers at least once, and a bucket may announce one object
  generation twice. Keyed by ``Landed.key`` (the object and its generation, or the series), only
  the first notification passes; the key is remembered for ``remember_s`` of event time, then
  its state is cleared (a timer), so state does not grow with the stream.
- ``AwaitSeries``: a DICOM converter stores a slide's pyramid one level (or instance) at a time,
  each with its own notification. Keyed by series, each notification pushes a quiet-period timer
  ``quiet_s`` past the latest one (event time: the publish time). When it fires, ``probe`` (the
  slide reader's check: None when the series opens as a pyramid, else what is missing) decides:
  readable, the series is emitted once; not yet, it waits for its next instance's notification.
  After ``max_wait_s`` from its first notification an unreadable series is a dead letter naming
  what was missing.
  Notifications for a series already emitted are dropped (counted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import BooleanCoder, FloatCoder, PickleCoder, StrUtf8Coder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    ReadModifyWriteStateSpec,
    SetStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import Timestamp

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, dead_letter

QUIET_S = 60.0
"""The default quiet period of a DICOM series: a minute without a new instance."""
MAX_WAIT_S = 3600.0
"""The default longest wait for a series to become readable."""
REMEMBER_S = 7 * 24 * 3600.0
"""How long a notification's key is remembered for de-duplication (Pub/Sub keeps unacked
messages at most 7 days)."""


class _FirstOfEach(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())
    FORGET = TimerSpec("forget", TimeDomain.WATERMARK)

    def __init__(self, remember_s: float) -> None:
        self._remember_s = remember_s

    def process(
        self,
        element: tuple[str, Any],
        seen: Any = beam.DoFn.StateParam(SEEN),
        forget: Any = beam.DoFn.TimerParam(FORGET),
    ) -> Iterator[Any]:
        _, landed = element
        if seen.read():
            progress.count("notifications_duplicate")
            return
        seen.write(True)
        forget.set(Timestamp(landed.published_s + self._remember_s))
        yield landed

    @on_timer(FORGET)
    def forget_key(self, seen: Any = beam.DoFn.StateParam(SEEN)) -> None:
        seen.clear()


class FirstOfEach(beam.PTransform):
    """``Landed`` -> the first ``Landed`` of each key (``Landed.key``)."""

    def __init__(self, remember_s: float = REMEMBER_S) -> None:
        super().__init__()
        self._remember_s = remember_s

    def expand(self, landed: beam.PCollection) -> beam.PCollection:
        return (
            landed
            | "ByKey" >> beam.Map(lambda item: (item.key, item))
            | "FirstOnly" >> beam.ParDo(_FirstOfEach(self._remember_s))
        )


class _AwaitSeries(beam.DoFn):
    STAGE = "AwaitSeries"
    LANDED = ReadModifyWriteStateSpec("landed", PickleCoder())
    LAST_S = ReadModifyWriteStateSpec("last_s", FloatCoder())
    INSTANCES = SetStateSpec("instances", StrUtf8Coder())
    DONE = ReadModifyWriteStateSpec("done", BooleanCoder())
    QUIET = TimerSpec("quiet", TimeDomain.WATERMARK)
    GIVE_UP = TimerSpec("give_up", TimeDomain.WATERMARK)

    def __init__(
        self, probe: Callable[[str], str | None], quiet_s: float, max_wait_s: float
    ) -> None:
        self._probe = probe
        self._quiet_s = quiet_s
        self._max_wait_s = max_wait_s

    def process(
        self,
        element: tuple[str, Any],
        landed: Any = beam.DoFn.StateParam(LANDED),
        last_s: Any = beam.DoFn.StateParam(LAST_S),
        instances: Any = beam.DoFn.StateParam(INSTANCES),
        done: Any = beam.DoFn.StateParam(DONE),
        quiet: Any = beam.DoFn.TimerParam(QUIET),
        give_up: Any = beam.DoFn.TimerParam(GIVE_UP),
    ) -> None:
        _, item = element
        if done.read():
            progress.count("series_notifications_after_done")
            return
        instances.add(item.instance_uid or item.key)
        if landed.read() is None:
            landed.write(item)  # the first notification: its publish time is the latency's start
            give_up.set(Timestamp(item.published_s + self._max_wait_s))
        latest = max(item.published_s, last_s.read() or item.published_s)
        last_s.write(latest)
        quiet.set(Timestamp(latest + self._quiet_s))

    @on_timer(QUIET)
    def quiet_passed(
        self,
        fired: Any = beam.DoFn.TimestampParam,
        landed: Any = beam.DoFn.StateParam(LANDED),
        instances: Any = beam.DoFn.StateParam(INSTANCES),
        done: Any = beam.DoFn.StateParam(DONE),
    ) -> Iterator[Any]:
        item = landed.read()
        if done.read() or item is None:
            return
        if self._probe(item.uri) is not None:  # not readable yet: the next instance's
            progress.count("series_probed_incomplete")  # notification sets the timer again
            return
        done.write(True)
        progress.count("series_complete")
        n = len(list(instances.read()))
        yield beam.transforms.window.TimestampedValue(
            _with(item, instances=str(n)), fired.micros / 1e6
        )

    @on_timer(GIVE_UP)
    def gave_up(
        self,
        landed: Any = beam.DoFn.StateParam(LANDED),
        instances: Any = beam.DoFn.StateParam(INSTANCES),
        done: Any = beam.DoFn.StateParam(DONE),
    ) -> Iterator[Any]:
        item = landed.read()
        if done.read() or item is None:
            return
        done.write(True)
        missing = self._probe(item.uri) or "it became readable only as the wait ended"
        n = len(list(instances.read()))
        error = TimeoutError(
            f"series not readable {self._max_wait_s:g} s after its first notification "
            f"({n} instance(s) announced): {missing}"
        )
        progress.count("series_incomplete")
        yield beam.pvalue.TaggedOutput(
            DEAD_LETTER,
            dead_letter(self.STAGE, item.uri, error, {"slide_id": item.slide_id, "uri": item.uri}),
        )


def _with(item: Any, **metadata: str) -> Any:
    import dataclasses

    return dataclasses.replace(item, metadata={**item.metadata, **metadata})


class AwaitSeries(beam.PTransform):
    """DICOM ``Landed`` notifications (one per instance) -> one ``Landed`` per series, once it
    has been quiet for ``quiet_s`` and ``probe(uri)`` finds it readable.

    Out: a dict with ``series`` and ``DEAD_LETTER`` rows (series still unreadable after
    ``max_wait_s``, naming what was missing).
    """

    def __init__(
        self,
        probe: Callable[[str], str | None],
        quiet_s: float = QUIET_S,
        max_wait_s: float = MAX_WAIT_S,
    ) -> None:
        super().__init__()
        self._fn = _AwaitSeries(probe, quiet_s, max_wait_s)

    def expand(self, landed: beam.PCollection) -> dict[str, beam.PCollection]:
        out = (
            landed
            | "BySeries" >> beam.Map(lambda item: (item.uri, item))
            | "WaitUntilQuiet" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER, main="series")
        )
        return {"series": out.series, DEAD_LETTER: out[DEAD_LETTER]}
