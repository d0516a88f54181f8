"""Reduced precision: what ``auto`` picks, the accuracy guard passing on a normal model in bf16,
falling back (or failing, strict) on a model that loses its labels in bf16."""

from __future__ import annotations

import numpy as np
import pytest

from tests.models_for_tests import patches
from transforms.core.errors import ConfigError, ModelLoadError
from transforms.models import precision
from transforms.models.loading import guarded, load_model, predict
from transforms.models.precision import GUARD_PATCHES, GuardConfig, resolve
from transforms.models.spec import ModelSpec


def test_auto_tries_the_device_s_reduced_precision_and_onnx_runs_as_exported():
    assert resolve("auto", "cpu", "pt2") == "bf16"  # tried, then kept only if measured faster
    assert resolve("auto", "cuda", "huggingface") == "fp16"
    assert resolve("auto", "cuda", "onnx") == "fp32"  # ONNX graphs run as exported
    assert (
        resolve("bf16", "cpu", "state_dict") == "bf16" and resolve("fp32", "cuda", "pt2") == "fp32"
    )
    with pytest.raises(ConfigError, match="ONNX graphs run as exported"):
        ModelSpec("m", "m.onnx", precision="fp16")


class _Timed(precision.Guarded):
    """A model whose reduced and fp32 runs take a known time per input (a real sleep)."""

    def __init__(self, reduced_s: float, exact_s: float, auto: bool) -> None:
        super().__init__()
        self.precision, self.auto = "bf16", auto
        self.per_input = {"bf16": reduced_s, "fp32": exact_s}

    def run(self, inputs: list[float]) -> list[np.ndarray]:
        import time

        time.sleep(self.per_input[self.precision] * len(inputs))
        return [np.array([x, 1 - x]) for x in inputs]


def _guard_timed(model: _Timed, n: int = 48, batch: int = 8) -> list:
    kind = ModelSpec("t", "t.pt2").kind
    data = [float(i % 2) for i in range(n)]
    out = []
    for i in range(0, n, batch):
        chunk = data[i : i + batch]
        out += precision.run_guarded(
            model, lambda k, c=chunk: model.run(c[:k]), kind, "t", GuardConfig()
        )
    return out


def test_auto_keeps_reduced_precision_only_where_it_measured_faster():
    slower = _Timed(reduced_s=0.004, exact_s=0.001, auto=True)
    _guard_timed(slower)
    assert slower.precision == "fp32" and slower.guard.passed and not slower.guard.kept
    assert slower.guard.speedup < 0.5

    faster = _Timed(reduced_s=0.001, exact_s=0.004, auto=True)
    _guard_timed(faster)
    assert faster.precision == "bf16" and faster.guard.kept and faster.guard.speedup > 2

    asked = _Timed(reduced_s=0.004, exact_s=0.001, auto=False)  # bf16 asked for: kept
    _guard_timed(asked)
    assert asked.precision == "bf16" and asked.guard.speedup < 0.5


def test_the_guard_checks_exactly_its_patch_count_whatever_the_batches():
    for batch in (7, 9, 41):
        model = _Timed(0.0, 0.0, auto=False)
        out = _guard_timed(model, n=82, batch=batch)
        assert model.guard.n == GUARD_PATCHES and len(out) == 82


def run_guard(model, spec, cfg, n=GUARD_PATCHES + 8, batch=8):  # noqa: ANN001
    out = []
    data = patches(n)
    for i in range(0, n, batch):
        out += guarded(model, data[i : i + batch], spec, None, cfg)
    return np.stack(out), data


def test_the_guard_passes_a_normal_model_in_bf16(tiny_models):
    spec = ModelSpec("two", tiny_models["two"], precision="bf16")
    model = load_model(spec)
    assert model.precision == "bf16"
    got, data = run_guard(model, spec, GuardConfig())
    assert model.precision == "bf16" and model.guard.passed
    assert model.guard.n >= GUARD_PATCHES and model.guard.agreement == 1.0
    exact = np.stack(predict(load_model(ModelSpec("two", tiny_models["two"])), data, spec))
    assert np.abs(got - exact).max() <= 0.02 and not np.array_equal(got, exact)  # bf16 ran


def test_the_guard_falls_back_to_fp32_on_a_model_that_loses_its_labels(tmp_path):
    from tests.models_for_tests import LossyInBf16, export_pt2

    uri = export_pt2(LossyInBf16().eval(), str(tmp_path / "lossy.pt2"))
    spec = ModelSpec("lossy", uri, precision="bf16")
    model = load_model(spec)
    got, data = run_guard(model, spec, GuardConfig())
    assert model.precision == "fp32" and not model.guard.passed
    assert model.guard.agreement < 0.99
    exact = np.stack(predict(load_model(ModelSpec("lossy", uri)), data, spec))
    np.testing.assert_array_equal(got, exact)  # every result is fp32's, the first batch too

    strict = load_model(spec)
    with pytest.raises(ModelLoadError, match="guard FAILED.*--precision_strict"):
        run_guard(strict, spec, GuardConfig(strict=True))
