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
    TestOptions,
)
from apache_beam.runners.runner import PipelineResult

from pipelines.flags import COMMON, Group, check_known
from pipelines.gpu import apply_gpu_preset
from pipelines.options import LOCAL_RUNNER, InferenceOptions
from pipelines.report import print_submitted
from transforms.core.errors import ConfigError
from transforms.core.progress import ProgressLine, ProgressReporter
from transforms.io.destinations import Destination

_DRY_RUN = "--dry_run=True"
"""Beam's ``--dry_run`` takes a value; given bare, it means true."""
_NOISY = ("apache_beam", "tiffslide", "fsspec", "urllib3", "google", "transformers")


def launch(
    options: PipelineOptions,
    destination: Destination,
    wire: Callable[[beam.Pipeline], Any],
    line: ProgressLine,
    n_models: int,
    report: Callable[[PipelineResult, float], None],
) -> PipelineResult:
    """Run the pipeline ``wire`` builds (defaulting to the local runner) with progress lines,
    then ``report(result, elapsed_s)``; a job that is only submitted or staged (``submit_only``)
    is not waited for, and says where to follow it instead. Nothing is prepared here: the job
    prepares its destination itself when it runs, so a dry run has no side effects."""
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_RUNNER
    started = time.monotonic()
    interval = options.view_as(InferenceOptions).progress_interval_s
    submitted = submit_only(options)
    dry_run = str(options.view_as(TestOptions).dry_run).lower() in ("true", "1", "yes")
    with ProgressReporter(interval, line, n_models):
        pipeline = beam.Pipeline(options=options)
        wire(pipeline)
        result = pipeline.run()
        if not (submitted or dry_run):
            result.wait_until_finish()
    if dry_run:
        print(f"\ndry run: the job graph was translated for {standard.runner}; nothing was run")
    elif submitted:
        print_submitted(result, options.view_as(GoogleCloudOptions).template_location)
    else:
        report(result, time.monotonic() - started)
    return result


def pipeline_options(argv: list[str], groups: tuple[Group, ...]) -> PipelineOptions:
    """Beam's options of ``argv``, after checking that every flag is Beam's or one of the
    pipeline's ``groups`` (``ConfigError`` naming it), with the ``--gpu`` preset applied."""
    argv = [
        _DRY_RUN if arg == "--dry_run" and (i + 1 == len(argv) or argv[i + 1][:2] == "--") else arg
        for i, arg in enumerate(argv)
    ]
    check_known(argv, COMMON + groups)
    options = PipelineOptions(argv)
    apply_gpu_preset(options)
    return options


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
