"""PatchModelHandler is a Beam ModelHandler: Beam's own RunInference runs it."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that

from transforms.models.spec import ModelSpec
from transforms.slides.read_patches import Patch

pytestmark = pytest.mark.pipeline


def test_beams_run_inference_runs_the_patch_handler(tiny_models):
    from apache_beam.ml.inference.base import RunInference

    from transforms.models.loading import load_model, predict
    from transforms.slides.patch_handler import PatchModelHandler

    spec = ModelSpec("two", tiny_models["two"])
    rng = np.random.default_rng(0)
    patches = [
        Patch("s1", 224 * i, 0, 224, 0, 0.5, rng.integers(0, 256, (64, 64, 3), np.uint8))
        for i in range(7)
    ]
    expected = np.stack(predict(load_model(spec), [p.pixels for p in patches], spec))
    want = {p.x_px: probs for p, probs in zip(patches, expected, strict=True)}

    def matches(results):
        got = {r.example.x_px: np.asarray(r.inference) for r in results}
        assert sorted(got) == sorted(want)
        for x, probs in got.items():
            np.testing.assert_allclose(probs, want[x], rtol=1e-5, atol=1e-6)
        assert {r.model_id for r in results} == {spec.shared_tag}

    with beam.Pipeline(runner=FnApiRunner()) as p:
        results = (
            p
            | beam.Create(patches)
            | RunInference(PatchModelHandler(spec, 64, min_batch_size=2, max_batch_size=4))
        )
        assert_that(results, matches)
