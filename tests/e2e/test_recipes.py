"""The real lavlab-shell model beside its recipe: ``--model shell=<file>`` alone gives the
class areas of README's seven-flag command; flags that change its preprocessing are said and
recorded; flags that contradict it fail before launch; describe and check read the model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.e2e.cli import run_module
from tests.processes import run_python

pytestmark = [pytest.mark.e2e, pytest.mark.shared_data]

SEVEN_FLAGS = [
    "--model_output",
    "shell=segmentation",
    "--model_activation",
    "shell=sigmoid",
    "--model_input",
    "shell=eho",
    "--class_names",
    "shell=lumen,epithelium,stroma",
    "--patch_px",
    "320",
    "--patch_mpp",
    "2",
    "--min_tissue",
    "0.05",
]


@pytest.fixture(scope="module")
def shell(shared_data, tmp_path_factory):
    """The shared ONNX model (and its external weights) copied beside a recipe written by
    ``pipelines.models init`` from README's seven flags."""
    folder = tmp_path_factory.mktemp("shell")
    source = shared_data.parent / "models" / "lavlab_shell_0.9.1_v1"
    for name in ("model_v1.onnx", "model_v1.onnx.data"):
        shutil.copy(source / name, folder / name)
    model = folder / "model_v1.onnx"
    done = run_python(
        *("-m", "pipelines.models", "init", str(model), *SEVEN_FLAGS),
        *("--modality", "brightfield_he", "--licence", "MIT"),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((folder / "model_v1.recipe.json").read_text())["patch_px"] == 320
    return {"original": str(source / "model_v1.onnx"), "with_recipe": str(model)}


@pytest.fixture(scope="module")
def slides(cmu1, tmp_path_factory):
    path = tmp_path_factory.mktemp("slides") / "slides.csv"
    path.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    return str(path)


def _run(slides: str, out, model: str, *flags: str):
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", slides, "--model", f"shell={model}", "--output", str(out)),
        *("--no_heatmaps", *flags),
    )
    return done


def _areas(out) -> np.ndarray:
    [summary] = pd.read_parquet(out / "slide_summaries").to_dict("records")
    return np.asarray(summary["class_area_mm2"])


def _models(out) -> list[dict]:
    [row] = pd.read_parquet(out / "runs").to_dict("records")
    return list(row["models"])


def test_the_recipe_alone_gives_the_class_areas_of_the_seven_flags(shell, slides, tmp_path):
    seven = _run(slides, tmp_path / "seven", shell["original"], *SEVEN_FLAGS)
    alone = _run(slides, tmp_path / "alone", shell["with_recipe"])
    assert seven.returncode == 0 and alone.returncode == 0, seven.stderr + alone.stderr
    assert "overrides" not in alone.stderr
    np.testing.assert_allclose(_areas(tmp_path / "alone"), _areas(tmp_path / "seven"), atol=1e-9)
    assert _areas(tmp_path / "alone")[0] == pytest.approx(0.042, abs=0.001)  # README's lumen
    # The grid runs past the slide's right and bottom edges: all its tissue is analysed.
    [summary] = pd.read_parquet(tmp_path / "alone" / "slide_summaries").to_dict("records")
    assert summary["coverage"] >= 0.98 and not summary["low_coverage"]
    assert "LOW COVERAGE" not in alone.stdout
    [run_row] = pd.read_parquet(tmp_path / "alone" / "runs").to_dict("records")
    assert run_row["coverage_min"] == summary["coverage"] and run_row["low_coverage"] == 0
    [model] = _models(tmp_path / "alone")
    assert model["recipe"].endswith("model_v1.recipe.json") and model["overrides"] is None
    assert model["licence"] == "MIT"


def test_flags_that_change_the_preprocessing_are_said_and_recorded(shell, slides, tmp_path):
    done = _run(
        slides,
        tmp_path / "out",
        shell["with_recipe"],
        "--model_input",
        "shell=rgb",
        "--patch_px",
        "200",
    )
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "overrides the recipe" in line]
    assert said == [
        "shell: patch_px 200 overrides the recipe's 320",
        "shell: input rgb overrides the recipe's eho",
    ]
    [model] = _models(tmp_path / "out")
    assert model["overrides"] == (
        "patch_px 200 overrides the recipe's 320; input rgb overrides the recipe's eho"
    )
    report = next((tmp_path / "out" / "report").rglob("index.html")).read_text()
    assert "overridden: patch_px 200 overrides the recipe&#x27;s 320; input rgb" in report


def test_a_class_count_the_recipe_contradicts_fails_before_launch(shell, slides, tmp_path):
    done = _run(slides, tmp_path / "out", shell["with_recipe"], "--class_names", "shell=a,b")
    assert done.returncode == 2
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "--class_names shell= gives 2 names (a, b), but the model has 3 classes" in line
    assert not (tmp_path / "out").exists()


def test_describe_and_check_read_the_model_against_its_recipe(shell, tmp_path):
    described = run_python("-m", "pipelines.models", "describe", shell["with_recipe"])
    assert described.returncode == 0, described.stderr
    assert "format    onnx" in described.stdout
    assert "output    logits: 2 x 3 x 320 x 320" in described.stdout
    checked = run_python("-m", "pipelines.models", "check", shell["with_recipe"])
    assert checked.returncode == 0 and "does what its recipe says" in checked.stdout
    # a recipe that names four classes for a three-channel net
    folder = tmp_path / "wrong"
    folder.mkdir()
    for name in ("model_v1.onnx", "model_v1.onnx.data"):
        shutil.copy(shell["with_recipe"].replace("model_v1.onnx", name), folder / name)
    recipe = json.loads(open(shell["with_recipe"].replace(".onnx", ".recipe.json")).read())
    recipe["class_names"] = ["a", "b", "c", "d"]
    (folder / "model_v1.recipe.json").write_text(json.dumps(recipe))
    wrong = run_python("-m", "pipelines.models", "check", str(folder / "model_v1.onnx"))
    assert wrong.returncode == 1
    assert "output logits has 3 channels; the recipe names 4 classes" in wrong.stderr
