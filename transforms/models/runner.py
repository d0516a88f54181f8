"""The one model-running DoFn base: a model shared per process, bisected batches, checked outputs.

Both pipelines run their models through ``ModelRunner``. It loads the model once per worker
process in ``setup()`` through ``apache_beam.utils.shared.Shared`` (a load failure fails the job
there, naming the model), runs each batch through ``SplittingRunner`` (bisection and
out-of-memory backoff, so only inputs that fail alone fail), and turns non-finite outputs into
``ModelOutputError``. Subclasses say how to load, how to run a batch and what to emit; they
never mutate their input elements.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.utils.shared import Shared

from transforms.core.bisection import Outcome, SplittingRunner
from transforms.core.environment import check_same_pickling, pickling_versions
from transforms.core.errors import ModelOutputError
from transforms.core.guard import GUARD, guard_row

MAX_BATCH = 4096
"""Largest batch handed to a model at once; out-of-memory errors lower it per process."""


class ModelRunner(beam.DoFn):
    """Base DoFn: batches in; subclasses emit results and dead letters from ``outcomes()``.

    Subclasses implement ``load()`` (called once per process, inside ``Shared``), ``infer()`` (a
    batch -> one output per element) and ``process()``.
    """

    def __init__(self, name: str, shared_tag: str) -> None:
        self._name = name
        self._shared_tag = shared_tag
        self._shared = Shared()
        self._model: Any = None
        self._runner: SplittingRunner | None = None
        self._launcher_env = pickling_versions()  # built in the launcher, checked on workers

    def load(self) -> Any:
        """The model, as ``infer`` takes it (a weak-referenceable object, for ``Shared``)."""
        raise NotImplementedError

    def infer(self, model: Any, batch: list[Any]) -> Sequence[Any]:
        """One output per element of ``batch``, in order."""
        raise NotImplementedError

    def setup(self) -> None:
        check_same_pickling(self._launcher_env)
        self._model = self._shared.acquire(self.load, tag=self._shared_tag)
        self._runner = SplittingRunner(lambda batch: self.infer(self._model, batch), MAX_BATCH)

    def outcomes(self, batch: Sequence[Any]) -> Iterator[Outcome]:
        """``(element, output, error)`` per element; a non-finite output is an error."""
        assert self._runner is not None, "setup() was not called"
        for element, output, error in self._runner.run(batch):
            if error is None and not np.all(np.isfinite(np.asarray(output, dtype=np.float64))):
                error = ModelOutputError(
                    f"model {self._name!r} returned non-finite values {_preview(output)}"
                )
                output = None
            yield element, output, error

    def guard_outputs(self) -> Iterator[Any]:
        """The accuracy guard's figures of the batches guarded since the last call, as rows of
        the ``GUARD`` output (``precision.py``): the run record collects them."""
        for result in self._model.take_guard_batches():
            yield beam.pvalue.TaggedOutput(GUARD, guard_row(result))


def _preview(output: Any) -> str:
    text = np.array2string(np.asarray(output), threshold=16, precision=4)
    return text if len(text) <= 200 else text[:200] + "..."
