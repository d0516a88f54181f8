"""Pipeline predictions equal a direct call of the same model on the same pixels."""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
import tiffslide
import torch
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.options import SlideJobConfig
from pipelines.slide_inference import build, write
from tests.pixels import padded_patch
from transforms.io.destinations import RunStamp, destination
from transforms.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from transforms.slides.geometry import PatchingConfig
from transforms.slides.run_model import BatchingConfig

pytestmark = pytest.mark.pipeline


def run_job(cfg: SlideJobConfig) -> None:
    pipeline = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    write(build(pipeline, cfg), cfg)
    pipeline.run().wait_until_finish()


def _job(tmp_path, cmu1, spec, batch_size, run_id):  # noqa: ANN001
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    cfg = SlideJobConfig(
        slides=str(manifest),
        patches=None,
        models=(spec,),
        patching=PatchingConfig(patch_px=64, patch_mpp=0.5, min_tissue=0.5),
        batching=BatchingConfig(batch_size, batch_size),
        destination=destination(str(tmp_path / run_id), None, None, None, False),
        skip_existing=False,
        group_by=None,
        run=RunStamp(run_id, dt.date(2026, 1, 1)),
        heatmaps=False,
    )
    run_job(cfg)
    rows = pd.read_parquet(tmp_path / run_id / "patch_predictions")
    return rows.sort_values(["x_px", "y_px"]).reset_index(drop=True)


@pytest.mark.parametrize("batch_size", [1, 7, 32])
def test_predictions_equal_a_direct_model_call(tmp_path, cmu1, tiny_models, batch_size):
    spec = ModelSpec("two", tiny_models["two"], version="t1")
    rows = _job(tmp_path, cmu1, spec, batch_size, f"b{batch_size}")
    summary = pd.read_parquet(tmp_path / f"b{batch_size}" / "slide_summaries").iloc[0]
    assert len(rows) == summary.patch_count == summary.patches_planned > 100
    assert set(rows.model_version) == {"t1"} and set(rows.run_id) == {f"b{batch_size}"}

    slide = tiffslide.TiffSlide(str(cmu1))
    pixels = np.stack(
        [padded_patch(slide, int(r.x_px), int(r.y_px), int(r.size_px)) for r in rows.itertuples()]
    )
    assert pixels.shape[1:] == (64, 64, 3)  # 0.499 mpp slide: a 64 px patch at 0.5 mpp, no resize
    net = torch.export.load(tiny_models["two"]).module()
    with torch.inference_mode():
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
            1, 3, 1, 1
        )
        direct = torch.softmax(net(x), dim=1).numpy()
    np.testing.assert_allclose(np.stack(rows.probs.to_numpy()), direct, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(rows.label.to_numpy(), direct.argmax(1))


def _direct_logits(model_uri: str, cmu1, rows: pd.DataFrame, one_by_one: bool) -> np.ndarray:  # noqa: ANN001
    slide = tiffslide.TiffSlide(str(cmu1))
    pixels = np.stack(
        [padded_patch(slide, int(r.x_px), int(r.y_px), 64) for r in rows.itertuples()]
    )
    net = torch.export.load(model_uri).module()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
        if one_by_one:
            return np.concatenate([net(x[i : i + 1]).numpy() for i in range(len(x))])
        return net(x).numpy()


def test_fp32_predictions_are_bit_for_bit_the_plain_model(tmp_path, cmu1, tiny_models):
    """With --precision fp32 (the default) nothing of the reduced-precision machinery touches
    the numbers: each patch's probabilities are, bit for bit, the softmax of the plain model's
    float32 logits for that patch alone (batches of 1, so no batch-size-dependent kernels)."""
    from transforms.models.kinds.base import activate

    spec = ModelSpec("two", tiny_models["two"], precision="fp32")
    rows = _job(tmp_path, cmu1, spec, 1, "fp32")
    direct = activate(_direct_logits(tiny_models["two"], cmu1, rows, one_by_one=True), "softmax")
    got = np.stack(rows.probs.to_numpy()).astype(np.float32)
    assert len(rows) > 100 and got.tobytes() == direct.astype(np.float32).tobytes()


def test_a_compiled_model_gives_the_eager_models_predictions(tmp_path, cmu1, tiny_models, caplog):
    """--compile: one static graph for batches of 7 (partial batches padded, never recompiled),
    built at setup; its predictions equal the eager model's."""
    import logging

    caplog.set_level(logging.INFO, logger="transforms.slides.patch_handler")
    spec = ModelSpec("two", tiny_models["two"], compile=True)
    rows = _job(tmp_path, cmu1, spec, 7, "compiled")
    assert len(rows) > 100 and len(rows) % 7 != 0  # the last batch was padded
    direct = torch.softmax(
        torch.from_numpy(_direct_logits(tiny_models["two"], cmu1, rows, one_by_one=False)), 1
    ).numpy()
    np.testing.assert_allclose(np.stack(rows.probs.to_numpy()), direct, atol=1e-5, rtol=0)
    compiled = [r.getMessage() for r in caplog.records if "compiled in" in r.getMessage()]
    assert len(compiled) == 1 and compiled[0].startswith(
        "model two compiled in fp32 for batches of 7"
    )


def test_compile_is_refused_for_onnx(tmp_path):
    from transforms.core.errors import ConfigError

    with pytest.raises(ConfigError, match="compile.*onnxruntime"):
        ModelSpec("seg", str(tmp_path / "m.onnx"), compile=True)
