"""What both entry points share: run a built pipeline locally with progress, and the CLI wrapper."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)
from apache_beam.runners.runner import PipelineResult

from pipelines.options import LOCAL_RUNNER, InferenceOptions
from pipelines.report import print_submitted
from transforms.core.errors import ConfigError
from transforms.core.progress import ProgressLine, ProgressReporter
from transforms.io.destinations import Destination, prepare

_NOISY = ("apache_beam", "tiffslide", "fsspec", "urllib3", "google", "transformers")


def launch(
    options: PipelineOptions,
    destination: Destination,
    wire: Callable[[beam.Pipeline], Any],
    line: ProgressLine,
    n_models: int,
    report: Callable[[PipelineResult, float], None],
) -> PipelineResult:
    """Prepare ``destination``, run the pipeline ``wire`` builds (defaulting to the local runner)
    with progress lines, then ``report(result, elapsed_s)``; a job that is only submitted or
    staged (``submit_only``) is not waited for, and says where to follow it instead."""
    prepare(destination)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_RUNNER
    started = time.monotonic()
    interval = options.view_as(InferenceOptions).progress_interval_s
    submitted = submit_only(options)
    with ProgressReporter(interval, line, n_models):
        pipeline = beam.Pipeline(options=options)
        wire(pipeline)
        result = pipeline.run()
        if not submitted:
            result.wait_until_finish()
    if submitted:
        print_submitted(result, options.view_as(GoogleCloudOptions).template_location)
    else:
        report(result, time.monotonic() - started)
    return result


def submit_only(options: PipelineOptions) -> bool:
    """A Flex Template launcher (``FLEX_TEMPLATE_PYTHON_PY_FILE`` is set in its image) or a
    ``--template_location`` run submits or stages the job and returns: nothing to wait for."""
    return bool(
        os.environ.get("FLEX_TEMPLATE_PYTHON_PY_FILE")
        or options.view_as(GoogleCloudOptions).template_location
    )


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
