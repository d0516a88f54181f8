"""A model made for brightfield H&E never runs on a fluorescence slide: that slide is a dead
letter for that model alone, naming both; other models on it still run; --allow_modality
overrides the recipe, and says so."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from tests.e2e.cli import read_errors

pytestmark = [pytest.mark.pipeline, pytest.mark.shared_data]


@pytest.fixture
def he_model(tiny_models, tmp_path) -> str:
    """The tiny two-class model beside a recipe that says it is for brightfield H&E."""
    model = tmp_path / "he" / "two.pt2"
    model.parent.mkdir()
    shutil.copy(tiny_models["two"], model)
    recipe = {"output_kind": "classification", "modality": "brightfield_he"}
    (tmp_path / "he" / "two.recipe.json").write_text(json.dumps(recipe))
    return str(model)


def _run(tmp_path, shared_data, he_model, tiny_models, *flags):
    from pipelines.slide_inference import run

    slides = tmp_path / "slides.csv"
    cmu1 = shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    ndpi = shared_data / "ndpi_tritc" / "test3-TRITC-2-560.ndpi"
    slides.write_text(f"slide_id,uri\ncmu1,{cmu1}\ntritc,{ndpi}\n")
    out = tmp_path / "out"
    run(
        ["--slides", str(slides), "--model", f"he={he_model}"]
        + ["--model", f"any={tiny_models['three']}", "--patch_px", "64", "--no_heatmaps"]
        + ["--output", str(out), *flags]
    )
    return out


def test_a_fluorescence_slide_is_a_dead_letter_for_the_he_model_only(
    tmp_path, shared_data, he_model, tiny_models
):
    out = _run(tmp_path, shared_data, he_model, tiny_models)
    errors = read_errors(out)
    assert [(e["stage"], e["key"], e["error_type"]) for e in errors] == [
        ("CheckModality/he", "tritc", "ModalityMismatch")
    ]
    assert errors[0]["message"] == (
        "model 'he' expects brightfield H&E slides; slide 'tritc' is fluorescence "
        "(--allow_modality he=any runs it anyway)"
    )
    summaries = pd.read_parquet(out / "slide_summaries")
    assert set(zip(summaries.slide_id, summaries.model_name, strict=True)) == {
        ("cmu1", "he"),
        ("cmu1", "any"),
        ("tritc", "any"),
    }
    predictions = pd.read_parquet(out / "patch_predictions")
    assert set(predictions[predictions.model_name == "he"].slide_id) == {"cmu1"}
    assert (predictions[predictions.model_name == "any"].slide_id == "tritc").sum() > 0
    [run_row] = pd.read_parquet(out / "runs").to_dict("records")
    assert (run_row["inputs"], run_row["inputs_with_results"]) == (2, 2)


def test_allow_modality_runs_it_anyway_and_says_so(tmp_path, shared_data, he_model, tiny_models):
    out = _run(tmp_path, shared_data, he_model, tiny_models, "--allow_modality", "he=any")
    assert read_errors(out) == []
    summaries = pd.read_parquet(out / "slide_summaries")
    assert ("tritc", "he") in set(zip(summaries.slide_id, summaries.model_name, strict=True))
    [run_row] = pd.read_parquet(out / "runs").to_dict("records")
    he = next(m for m in run_row["models"] if m["name"] == "he")
    assert he["overrides"] == "modality any overrides the recipe's brightfield_he"
