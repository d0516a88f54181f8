"""A streaming job of ReadNotifications alone, for the emulator test: each slide that lands is
written as one JSON file (a fresh name each time, so a duplicate would show as a second file),
and each ignored message and dead letter likewise.

    python -m tests.stream.notifications_driver OUT SUBSCRIPTION... --root STORE=URL
"""

from __future__ import annotations

import argparse
import json
import os
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from transforms.core.errors import DEAD_LETTER
from transforms.slides.reader import unreadable
from transforms.stream.read import IGNORED, ReadNotifications


class _WriteEach(beam.DoFn):
    def __init__(self, folder: str, kind: str) -> None:
        self._folder = folder
        self._kind = kind

    def process(self, item: object) -> None:
        row = item.manifest_row() | {"key": item.key} if hasattr(item, "manifest_row") else item
        os.makedirs(self._folder, exist_ok=True)
        path = os.path.join(self._folder, f"{self._kind}-{uuid.uuid4().hex}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(row, f, default=str)
        os.replace(path + ".tmp", path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("subscriptions", nargs="+")
    parser.add_argument("--root", action="append", default=[])
    parser.add_argument("--quiet_s", type=float, default=15)
    parser.add_argument("--max_wait_s", type=float, default=120)
    args = parser.parse_args()
    roots = dict(r.split("=", 1) for r in args.root)
    options = PipelineOptions(["--runner=DirectRunner"])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        read = p | "ReadNotifications" >> ReadNotifications(
            args.subscriptions, unreadable, roots, args.quiet_s, args.max_wait_s
        )
        for name in ("slides", IGNORED, DEAD_LETTER):
            read[name] | f"Write/{name}" >> beam.ParDo(_WriteEach(args.out, name))


if __name__ == "__main__":
    main()
