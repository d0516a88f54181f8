"""A slide too coarse for a model's recipe resolution (beyond its mpp tolerance) is a dead
letter for that model alone, naming both; other models on the slide still run; a recipe's wider
tolerance lets it run."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from tests.e2e.cli import read_errors

pytestmark = [pytest.mark.pipeline, pytest.mark.shared_data]


def _fine_model(tiny_models, tmp_path, **recipe) -> str:
    """The tiny two-class model beside a recipe asking for 64 px patches at 0.25 µm/px."""
    model = tmp_path / "fine" / "two.pt2"
    model.parent.mkdir()
    shutil.copy(tiny_models["two"], model)
    values = {"output_kind": "classification", "patch_px": 64, "patch_mpp": 0.25, **recipe}
    (tmp_path / "fine" / "two.recipe.json").write_text(json.dumps(values))
    return str(model)


def _run(tmp_path, cmu1, fine, tiny_models):
    from pipelines.slide_inference import run

    slides = tmp_path / "slides.csv"
    slides.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    out = tmp_path / "out"
    run(
        ["--slides", str(slides), "--model", f"fine={fine}"]
        + ["--model", f"coarse={tiny_models['three']}", "--patch_px", "64", "--no_heatmaps"]
        + ["--model_mpp", "coarse=2", "--output", str(out)]
    )
    return out


def test_a_slide_too_coarse_for_a_model_is_its_dead_letter_alone(tmp_path, cmu1, tiny_models):
    out = _run(tmp_path, cmu1, _fine_model(tiny_models, tmp_path), tiny_models)
    [error] = read_errors(out)
    assert (error["stage"], error["key"], error["error_type"]) == (
        "CheckResolution/fine",
        "cmu1",
        "ResolutionError",
    )
    assert "slide resolution 0.499 mpp is coarser than the patches' 0.25 mpp" in error["message"]
    assert "more than 1.1x" in error["message"]
    predictions = pd.read_parquet(out / "patch_predictions")
    assert set(predictions.model_name) == {"coarse"}
    summaries = pd.read_parquet(out / "slide_summaries")
    assert list(summaries.model_name) == ["coarse"]


def test_a_recipes_wider_mpp_tolerance_lets_the_model_run(tmp_path, cmu1, tiny_models):
    fine = _fine_model(tiny_models, tmp_path, mpp_tolerance=1.0)
    out = _run(tmp_path, cmu1, fine, tiny_models)
    assert read_errors(out) == []
    predictions = pd.read_parquet(out / "patch_predictions")
    assert set(predictions.model_name) == {"fine", "coarse"}
