"""Duplicates dropped and DICOM series awaited, with TestStream (watermark advances, late and
repeated notifications, the quiet-period timer), on the streaming direct runner."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.core.errors import DEAD_LETTER
from transforms.stream.notifications import Landed
from transforms.stream.series import AwaitSeries, FirstOfEach

pytestmark = pytest.mark.pipeline

SERIES = "dicomweb+http://store/dicom-web/studies/1/series/1.1"
READABLE: set[str] = set()
"""The series the probe finds readable (a module global: the probe must pickle by reference)."""


COLLECTED: list = []


def collect(row: dict) -> None:
    COLLECTED.append(row)


def probe(uri: str) -> str | None:
    return None if uri in READABLE else "no pyramid level readable yet"


def _instance(uri: str, instance: str, t: float) -> TimestampedValue:
    item = Landed(uri.rsplit("/", 1)[-1], uri, uri, t, "dicom", instance_uid=instance)
    return TimestampedValue(item, t)


def _streaming() -> PipelineOptions:
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def test_each_object_generation_passes_once_however_often_it_is_announced():
    def landed(key: str, t: float) -> TimestampedValue:
        return TimestampedValue(Landed(key, f"gs://b/{key}", key, t, "gcs"), t)

    events = (
        TestStream()
        .add_elements([landed("a#1", 10), landed("b#1", 11)])
        .advance_watermark_to(20)
        .add_elements([landed("a#1", 25), landed("a#2", 26)])  # a redelivery, a new generation
        .advance_watermark_to(1000)
        .add_elements([landed("a#1", 1001)])  # after the key was forgotten (remember_s=100)
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=_streaming()) as p:
        keys = p | events | FirstOfEach(remember_s=100) | beam.Map(lambda item: item.key)
        assert_that(keys, equal_to(["a#1", "b#1", "a#2", "a#1"]))


def test_a_series_is_emitted_once_after_its_last_level_has_been_quiet_for_the_period():
    READABLE.add(SERIES)
    events = (
        TestStream()
        .add_elements([_instance(SERIES, "1.1.1", 100)])  # level 0 stored
        .advance_watermark_to(105)
        .add_elements([_instance(SERIES, "1.1.2", 110), _instance(SERIES, "1.1.2", 111)])
        .advance_watermark_to(130)  # 20 s after level 1: not quiet for 30 s yet
        .advance_watermark_to(150)  # now it is
        .add_elements([_instance(SERIES, "1.1.2", 160)])  # a redelivery after it was emitted
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=_streaming()) as p:
        out = p | events | AwaitSeries(probe, quiet_s=30, max_wait_s=600)
        emitted = out["series"] | beam.Map(
            lambda item, ts=beam.DoFn.TimestampParam: (item.uri, item.metadata["instances"], ts)
        )
        assert_that(emitted, equal_to([(SERIES, "2", 141)]), label="once")
        assert_that(out[DEAD_LETTER], equal_to([]), label="no dead letters")


def test_a_series_that_never_becomes_readable_is_a_dead_letter_naming_what_is_missing():
    broken = "dicomweb+http://store/dicom-web/studies/1/series/9.9"
    events = (
        TestStream()
        .add_elements([_instance(broken, "9.9.1", 100)])
        .advance_watermark_to(250)  # quiet since 130, and unreadable: it waits
        .advance_watermark_to(410)  # past the longest wait
        .advance_watermark_to_infinity()
    )
    COLLECTED.clear()
    with beam.Pipeline(options=_streaming()) as p:
        out = p | events | AwaitSeries(probe, quiet_s=30, max_wait_s=300)
        assert_that(out["series"], equal_to([]), label="nothing emitted")
        _ = out[DEAD_LETTER] | beam.Map(collect)  # the direct runner is in-process
    [row] = COLLECTED
    assert (row["stage"], row["key"]) == ("AwaitSeries", broken)
    assert row["message"] == (
        "series not readable 300 s after its first notification (1 instance(s) announced): "
        "no pyramid level readable yet"
    )
