"""A stream's inbox: each landed slide written down before it is processed, marked done once its
rows are in place; a restarted stream takes up every slide it finds not done.

    <output>/_inbox/<slide>.json   the landed slide (its manifest row, key, publish time)
    <output>/_inbox/<slide>.done   written after every table's rows of that slide are in place

(with a BigQuery output, ``<temp_location>/pathbeam_stream/<project>.<dataset>/_inbox``).

On Dataflow, Pub/Sub messages are acknowledged only once the first stage's output is durable, so
a crash re-delivers them; Beam's direct runner acknowledges on pull, so without the inbox a slide
in flight when the process dies would be lost. With it, a kill at any point after a slide is
recorded costs a reprocessing, never the slide; the keyed writes (``io.keyed_writes``) make the
reprocessing replace rather than add rows. What the inbox cannot hold: a DICOM series still
waiting for its quiet period (its instances' notifications live in the stream's state, which a
direct-runner restart loses; Dataflow keeps it).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import TimestampedValue

from transforms.core import progress
from transforms.io.schemas import safe_name
from transforms.stream.notifications import Landed

INBOX = "_inbox"


def inbox_folder(dest: Any) -> str:
    """Where a stream's inbox lives (``_inbox`` under it): its output folder; with a BigQuery
    output, a folder of ``--temp_location`` named for the dataset, so that a restarted stream
    writing to the same dataset finds it."""
    if dest.bigquery is None:
        return str(dest.folder)
    from transforms.io.bigquery_windows import stream_temp

    return stream_temp(str(dest.temp_location), f"{dest.bigquery.project}.{dest.bigquery.dataset}")


def _uri(folder: str, slide_id: str, suffix: str) -> str:
    return f"{folder.rstrip('/')}/{INBOX}/{safe_name(slide_id)}{suffix}"


def pending(folder: str) -> list[Landed]:
    """The slides recorded in ``folder``'s inbox and not done (read at a stream's start)."""
    from transforms.core.remote_io import filesystem

    fs, root = filesystem(f"{folder.rstrip('/')}/{INBOX}")
    if not fs.exists(root):
        return []
    names = set(fs.ls(root, detail=False))
    out = []
    for name in sorted(n for n in names if n.endswith(".json")):
        if name.removesuffix(".json") + ".done" in names:
            continue
        with fs.open(name, "r") as f:
            out.append(Landed(**json.load(f)))
    return out


class _Record(beam.DoFn):
    def __init__(self, folder: str) -> None:
        self._folder = folder

    def process(self, landed: Landed) -> Iterator[Landed]:
        from transforms.core.remote_io import filesystem, write_whole

        uri = _uri(self._folder, landed.slide_id, ".json")
        write_whole(uri, json.dumps(dataclasses.asdict(landed)).encode())
        fs, done = filesystem(_uri(self._folder, landed.slide_id, ".done"))
        if fs.exists(done):  # a new generation of a slide done before
            fs.rm(done)
        progress.count("slides_landed")
        yield landed


class RecordLanded(beam.PTransform):
    """``Landed`` -> the same, each written to the inbox first."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self._folder = folder

    def expand(self, landed: beam.PCollection) -> beam.PCollection:
        return landed | "WriteInbox" >> beam.ParDo(_Record(self._folder))


class _MarkDone(beam.DoFn):
    def __init__(self, folder: str) -> None:
        self._folder = folder

    def process(self, element: tuple[str, Iterable[str]]) -> Iterator[str]:
        from transforms.core.remote_io import open_uri

        slide_id, tables = element
        with open_uri(_uri(self._folder, slide_id, ".done"), "w", auto_mkdir=True) as f:
            f.write(json.dumps({"tables": sorted(set(tables)), "at": time.time()}))
        progress.count("slides_done")
        yield slide_id


class MarkDone(beam.PTransform):
    """``(slide_id, table)`` for each file in place -> the slide marked done in the inbox, once
    per window, after all of its window's files are written."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self._folder = folder

    def expand(self, written: beam.PCollection) -> beam.PCollection:
        return (
            written
            | "BySlide" >> beam.GroupByKey()
            | "WriteDone" >> beam.ParDo(_MarkDone(self._folder))
        )


def restamped(landed: Any) -> Any:
    """A slide (or a message about one) stamped with the moment it is taken up. Its windows
    are those of its landing, whatever its notification's time: a DICOM series is emitted by a
    timer long after its first notification, and a slide taken up from the inbox by a restarted
    stream later still; with their old times they would reach closed windows and be dropped as
    late."""
    return TimestampedValue(landed, time.time())
