"""What both entry points share: run a built pipeline locally with progress, and the CLI wrapper."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
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

from pipelines.flags import COMMON, Group, check_known, is_true, print_beam_help, print_help
from pipelines.gpu import apply_gpu_preset
from pipelines.options import LOCAL_RUNNER, InferenceOptions
from pipelines.report import print_submitted
from transforms.core.environment import (
    WORKER_LOCK,
    WORKER_LOCK_ENV,
    launch_mismatches,
    worker_lock,
)
from transforms.core.errors import ConfigError, PipelineError, printable
from transforms.core.outcome import Outcome, RunFailedError
from transforms.core.progress import ProgressLine, ProgressReporter
from transforms.io.commits import discard, recover
from transforms.io.destinations import Destination
from transforms.io.runs import (
    RunInfo,
    claim_run_id,
    mark_failed,
    record,
    release_run_id,
    write_record,
)

FLEX_LAUNCHER_ENV = "FLEX_TEMPLATE_PYTHON_PY_FILE"
"""Set in the Flex Template launcher image."""
_DRY_RUN = "--dry_run=True"
"""Beam's ``--dry_run`` takes a value; given bare, it means true."""
_NOISY = (
    "apache_beam",
    "tiffslide",
    "wsidicom",
    "pydicom",
    "fsspec",
    "urllib3",
    "google",
    "transformers",
    "torch",
)


def launch(
    options: PipelineOptions,
    destination: Destination,
    info: RunInfo | None,
    wire: Callable[[beam.Pipeline], Any],
    line: ProgressLine,
    n_models: int,
    report: Callable[[PipelineResult, float], Outcome],
) -> PipelineResult:
    """Run the pipeline ``wire`` builds (defaulting to the local runner) with progress lines,
    then ``report(result, elapsed_s)``; a job that is only submitted or staged (``submit_only``)
    is not waited for, and says where to follow it instead. Nothing is prepared here: the job
    prepares its destination itself when it runs, so a dry run has no side effects.

    The job records itself (``RecordRun``); here the run's record is written when the job is
    only submitted (status ``submitted``), and when a local run fails (``failed``, the error).

    Raises:
      RunFailedError: after the report, when inputs failed and none produced a result.
    """
    run_id = info.run_id if info else "run"
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_RUNNER
    started = time.monotonic()
    interval = options.view_as(InferenceOptions).progress_interval_s
    submitted = submit_only(options)
    dry_run = is_dry_run(options)
    template = options.view_as(GoogleCloudOptions).template_location
    claimed = info is not None and not dry_run and not template
    check_worker_environment(options)
    if claimed and destination.folder is not None:
        recover(destination.folder)  # finish commits that crashed runs began, before any read
    if claimed:
        claim_run_id(destination, run_id)  # ConfigError: the id is recorded or in use
    with ProgressReporter(interval, line, n_models):
        pipeline = beam.Pipeline(options=options)
        wire(pipeline)
        try:
            result = pipeline.run()
            if not (submitted or dry_run):
                result.wait_until_finish()
        except BaseException as exc:
            if destination.folder is not None:
                discard(destination.folder, run_id)  # never visible; now not kept either
            if info is not None and not dry_run:
                mark_failed(destination, info, f"{type(exc).__name__}: {exc}")
            if claimed:
                release_run_id(destination, run_id)
            raise
    if dry_run:
        print(f"\ndry run: the job graph was translated for {standard.runner}; nothing was run")
    elif submitted:
        if info is not None and not template:  # a staged template is not a run yet
            write_record(destination, record(info, "submitted"))
        print_submitted(result, template)
    else:
        done = report(result, time.monotonic() - started)
        if done.inputs and not done.with_results and done.failed:
            error = f"no input produced a result: all {done.failed} failed (see the dead letters)"
            if info is not None:
                mark_failed(destination, info, error)
            if claimed:
                release_run_id(destination, run_id)
            raise RunFailedError(error)
    return result


def check_worker_environment(options: PipelineOptions) -> None:
    """On Dataflow, the workers unpickle what this process pickles: refuse (``ConfigError``,
    before submitting) a launcher whose Beam or dill differ from the worker
    image's lock."""
    runner = str(options.view_as(StandardOptions).runner or "")
    if runner.removesuffix("Runner").lower() != "dataflow":
        return
    lock = worker_lock()
    if lock is None or not lock.is_file():
        logging.getLogger(__name__).warning(
            "cannot check this launcher against the worker image: no %s (set %s)",
            WORKER_LOCK,
            WORKER_LOCK_ENV,
        )
        return
    found = launch_mismatches(lock)
    if found:
        raise ConfigError(
            f"--runner {runner}: this launcher cannot build a graph the workers can read: "
            + "; ".join(found)
            + f" ({lock}). Install this environment from the same lock (scripts/setup.sh)"
        )


def pipeline_options(argv: list[str], groups: tuple[Group, ...]) -> PipelineOptions:
    """Beam's options of ``argv``, after checking that every flag is Beam's or one of the
    pipeline's ``groups`` (``ConfigError`` naming it), with the ``--gpu`` preset applied."""
    argv = [
        _DRY_RUN if arg == "--dry_run" and (i + 1 == len(argv) or argv[i + 1][:2] == "--") else arg
        for i, arg in enumerate(argv)
    ]
    try:
        check_known(argv, COMMON + groups)
    except ConfigError as exc:
        if not os.environ.get(FLEX_LAUNCHER_ENV):
            raise
        # The template's metadata validated its own parameters; whatever else the Flex
        # Template launcher adds is Dataflow's business, so it is logged, not refused.
        logging.getLogger(__name__).warning("%s", exc)
    options = PipelineOptions(argv)
    apply_gpu_preset(options)
    return options


def is_dry_run(options: PipelineOptions) -> bool:
    """``--dry_run``: translate the job graph, run nothing (Beam keeps the flag's text)."""
    return is_true(options.view_as(TestOptions).dry_run)


def submit_only(options: PipelineOptions) -> bool:
    """A Flex Template launcher (``FLEX_TEMPLATE_PYTHON_PY_FILE`` is set in its image) or a
    ``--template_location`` run submits or stages the job and returns: nothing to wait for."""
    return bool(
        os.environ.get(FLEX_LAUNCHER_ENV) or options.view_as(GoogleCloudOptions).template_location
    )


def cli(
    run: Callable[[list[str]], Any], prog: str, summary: str, groups: tuple[Group, ...]
) -> None:
    """The command line: ``--help`` (and ``--help_beam``), then ``run``. Exit codes: 0 done;
    2 bad flags or configuration, before anything starts; 1 a run that failed (a model that
    cannot load, no input with a result, over ``--max_failed_fraction``), in one line, with the
    traceback only under ``--verbose``."""
    argv = sys.argv[1:]
    if "--help" in argv or "-h" in argv:
        print_help(prog, summary, COMMON + groups)
        return
    if "--help_beam" in argv:
        print_beam_help(prog)
        return
    verbose = any(
        a == "--verbose" or (a.startswith("--verbose=") and is_true(a.partition("=")[2]))
        for a in argv
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in _NOISY:  # Beam repeats a failure's traceback in its own log several times
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.CRITICAL)
    try:
        run(argv)
    except ConfigError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - one clear line; the traceback on request
        if verbose:
            traceback.print_exc()
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        what = cause if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {cause}"
        hint = "" if verbose else " (--verbose shows the traceback)"
        print(f"error: {printable(what)}{hint}", file=sys.stderr)
        sys.exit(1)
