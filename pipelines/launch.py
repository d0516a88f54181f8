"""What both entry points share: run a built pipeline locally with progress, and the CLI wrapper."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult

from pipelines.options import LOCAL_RUNNER, InferenceOptions
from transforms.errors import ConfigError
from transforms.progress import ProgressLine, ProgressReporter

_NOISY = ("apache_beam", "tiffslide", "fsspec", "urllib3", "google", "transformers")


def launch(
    options: PipelineOptions,
    wire: Callable[[beam.Pipeline], Any],
    line: ProgressLine,
    n_models: int,
) -> tuple[PipelineResult, float]:
    """Run a pipeline that ``wire`` builds, defaulting to the local runner, with progress lines.

    Returns the finished result and the elapsed seconds.
    """
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_RUNNER
    started = time.monotonic()
    interval = options.view_as(InferenceOptions).progress_interval_s
    with ProgressReporter(interval, line, n_models):
        pipeline = beam.Pipeline(options=options)
        wire(pipeline)
        result = pipeline.run()
        result.wait_until_finish()
    return result, time.monotonic() - started


def cli(run: Callable[[list[str]], Any]) -> None:
    """Call ``run`` with the command line; a ``ConfigError`` exits 2 with its message."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
