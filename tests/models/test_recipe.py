"""Model recipes: the schema names what is wrong, flags override by one precedence, and the
published schema file is the code's."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from transforms.core.errors import ConfigError
from transforms.models.recipe import (
    Recipe,
    apply_recipe,
    check_recipe,
    load_recipe,
    recipe_schema,
    recipe_uri,
)

SHELL = {
    "output_kind": "segmentation",
    "activation": "sigmoid",
    "input": "eho",
    "class_names": ["lumen", "epithelium", "stroma"],
    "patch_px": 320,
    "patch_mpp": 2.0,
    "min_tissue": 0.05,
    "modality": "brightfield_he",
}


def test_the_published_schema_is_the_codes():
    published = json.loads((REPO / "transforms" / "models" / "recipe.schema.json").read_text())
    assert published == recipe_schema(), "python -m pipelines.models schema > ...schema.json"


@pytest.mark.parametrize(
    "change, said",
    [
        ({"patch_size": 320}, "unknown field 'patch_size'"),
        ({"patch_px": "320"}, "`patch_px` '320' is not of type 'integer'"),
        ({"patch_px": 4}, "`patch_px` 4 is less than the minimum of 8"),
        ({"class_names": ["a", "a", "b"]}, "`class_names` ['a', 'a', 'b'] has non-unique"),
        ({"output_kind": "detection"}, "`output_kind` 'detection' is not one of"),
        ({"mean": [0.5, 0.5]}, "`mean` [0.5, 0.5] is too short"),
        ({"modality": "h&e"}, "`modality` 'h&e' is not one of"),
        ({"class_colours": ["#ff0000"]}, "`class_colours` has 1 colours for 3 classes"),
    ],
)
def test_a_bad_recipe_is_refused_naming_the_field(change, said):
    with pytest.raises(ConfigError) as failure:
        check_recipe({**SHELL, **change}, "x.recipe.json")
    assert said in str(failure.value) and "recipe x.recipe.json" in str(failure.value)


def test_a_recipe_lives_beside_a_file_or_inside_a_folder():
    assert recipe_uri("gs://b/m/model_v1.onnx", "onnx") == "gs://b/m/model_v1.recipe.json"
    assert recipe_uri("/m/net.pt2", "pt2") == "/m/net.recipe.json"
    assert recipe_uri("/m/vit/", "huggingface") == "/m/vit/recipe.json"


def test_flags_override_the_recipe_and_each_override_is_said():
    recipe = Recipe("r.json", check_recipe(dict(SHELL), "r.json"))
    fields, said = apply_recipe("shell", recipe, {"input": "rgb"}, {"patch_px": 200})
    assert fields["input"] == "rgb" and fields["patch_px"] == 200
    assert fields["class_names"] == ("lumen", "epithelium", "stroma")
    assert said == (
        "patch_px 200 overrides the recipe's 320",
        "input rgb overrides the recipe's eho",
    )
    same, none = apply_recipe("shell", recipe, {"patch_px": 320}, {})
    assert none == () and same["patch_px"] == 320  # a flag equal to the recipe overrides nothing
    # a model's own flag wins over the job's; a job flag the recipe does not set is the job's
    fields, said = apply_recipe("shell", recipe, {"patch_px": 256}, {"patch_px": 200})
    assert fields["patch_px"] == 256 and said == ("patch_px 256 overrides the recipe's 320",)
    bare = Recipe("r.json", {"class_names": ["a", "b"]})
    fields, said = apply_recipe("m", bare, {}, {"patch_px": 200})
    assert "patch_px" not in fields and said == ()


def test_flags_that_contradict_the_recipe_fail_naming_both():
    recipe = Recipe("r.json", dict(SHELL))
    with pytest.raises(ConfigError, match=r"gives 2 names \(a, b\), but the model has 3 classes"):
        apply_recipe("shell", recipe, {"class_names": ("a", "b")}, {})
    with pytest.raises(ConfigError, match="says the model gives segmentation outputs"):
        apply_recipe("shell", recipe, {"output_kind": "classification"}, {})


def test_a_hugging_face_config_gives_class_names_without_a_recipe(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"1": "tumour", "0": "normal"}}))
    recipe = load_recipe(str(tmp_path), "huggingface")
    assert recipe is not None and recipe.get("class_names") == ["normal", "tumour"]
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "LABEL_0"}}))
    assert load_recipe(str(tmp_path), "huggingface") is None  # transformers' placeholders
    (tmp_path / "recipe.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_recipe(str(tmp_path), "huggingface")
