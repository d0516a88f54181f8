"""Failed batches are split so only elements that fail alone fail; OOM lowers the batch cap."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from transforms.core.bisection import SplittingRunner
from transforms.models.spec import ModelSpec
from transforms.slides.read_patches import Patch
from transforms.slides.run_model import BatchingConfig, RunModel


def test_bisection_isolates_the_bad_elements_and_keeps_order():
    calls = []

    def fn(batch):
        calls.append(len(batch))
        if any(x % 13 == 0 for x in batch):
            raise ValueError("bad")
        return [x * 10 for x in batch]

    out = SplittingRunner(fn, max_size=64).run(list(range(1, 33)))
    assert [x for x, _, _ in out] == list(range(1, 33))
    assert [x for x, _, e in out if e is not None] == [13, 26]
    assert all(r == x * 10 for x, r, e in out if e is None)
    assert len(calls) < 32  # far fewer calls than one per element


def test_out_of_memory_halves_the_batch_and_remembers_the_cap():
    sizes = []

    def fn(batch):
        sizes.append(len(batch))
        if len(batch) > 5:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return batch

    runner = SplittingRunner(fn, max_size=64)
    assert all(e is None for _, _, e in runner.run(list(range(40))))
    assert runner.cap == 5
    sizes.clear()
    runner.run(list(range(40)))
    assert max(sizes) <= 5 and len(sizes) == 8  # the next batch goes straight to the safe size


def patches(n, blank=()):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        if i in blank:
            pixels[:] = 255
        out.append(Patch("s", i * 32, 0, 32, 0, 0.5, pixels))
    return out


def _xy(row):
    return row["x_px"]


def _key(row):
    return row["key"]


@pytest.mark.parametrize("model_class, blank", [("OomAboveFour", ()), ("FailsOnWhite", (3, 11))])
def test_run_model_gives_every_other_patch_its_prediction(tmp_path, model_class, blank):
    from tests.models_for_tests import TinyPatchNet

    torch.manual_seed(0)
    path = tmp_path / "weights.pth"
    torch.save(TinyPatchNet(2).state_dict(), path)
    spec = ModelSpec("m", str(path), model_class=f"tests.models_for_tests:{model_class}")
    with beam.Pipeline(runner=FnApiRunner()) as p:
        out = (
            p
            | beam.Create(patches(20, blank))
            | RunModel(spec, BatchingConfig(16, 16), "r", patch_px=32)
        )
        expected = [i * 32 for i in range(20) if i not in blank]
        assert_that(out["rows"] | beam.Map(_xy), equal_to(expected))
        assert_that(
            out["dead_letters"] | beam.Map(_key),
            equal_to([f"s@{i * 32},0" for i in blank]),
            label="DeadLetters",
        )
