"""Model recipes: the schema names what is wrong, flags override by one precedence, and the
published schema file is the code's."""

from __future__ import annotations

import json

import pytest

from bench.bench_stain_jitter import RECIPE
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

SHELL = RECIPE
"""README's seven flags for the lavlab net, as its recipe (the bench's, one copy)."""


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


@pytest.fixture
def onnx_graph(tmp_path):
    """A 64 px, 2-class ONNX graph (a fixed input size, a dynamic batch)."""
    pytest.importorskip("torch")
    from tests.models_for_tests import TinyPatchNet, export_onnx

    return export_onnx(TinyPatchNet(2), str(tmp_path / "net.onnx"), patch_px=64)


def _with_metadata(path: str, **props: str) -> str:
    import onnx

    model = onnx.load(path)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)
    return path


def test_the_onnx_header_is_read_as_onnx_reads_it_without_the_weights(onnx_graph):
    import onnx

    from transforms.models.onnx_header import onnx_header

    _with_metadata(onnx_graph, author="lab", class_names="a,b")
    model = onnx.load(onnx_graph)
    header = onnx_header.__wrapped__(onnx_graph)
    expected = tuple(
        (
            i.name,
            tuple(
                d.dim_value if d.HasField("dim_value") else d.dim_param
                for d in i.type.tensor_type.shape.dim
            ),
        )
        for i in model.graph.input
    )
    assert header.inputs == expected
    assert header.metadata == {p.key: p.value for p in model.metadata_props}
    assert header.image_size() == (64, 64)


def test_onnx_metadata_props_give_the_recipe_where_there_is_no_recipe_file(onnx_graph):
    _with_metadata(
        onnx_graph, **{"pathbeam.recipe": json.dumps({"class_names": ["x", "y"], "patch_px": 64})}
    )
    from transforms.models.onnx_header import onnx_header

    onnx_header.cache_clear()
    recipe = load_recipe(onnx_graph, "onnx")
    assert recipe is not None and recipe.uri.endswith("#metadata_props")
    assert recipe.values == {"class_names": ["x", "y"], "patch_px": 64}


def test_onnx_class_names_in_metadata_props_are_class_names(onnx_graph):
    from transforms.models.onnx_header import onnx_header

    _with_metadata(onnx_graph, labels='["benign", "tumour"]')
    onnx_header.cache_clear()
    recipe = load_recipe(onnx_graph, "onnx")
    assert recipe is not None and recipe.values == {"class_names": ["benign", "tumour"]}


def test_a_patch_edge_a_fixed_shape_onnx_graph_refuses_fails_naming_both(onnx_graph):
    from transforms.models.recipe import check_fixed_size

    check_fixed_size("m", onnx_graph, 64, "--patch_px")  # its own size: fine
    with pytest.raises(
        ConfigError,
        match=r"fixed 64x64 inputs, but its patches would be "
        r"96x96 \(--patch_px\)",
    ):
        check_fixed_size("m", onnx_graph, 96, "--patch_px")


def test_the_pipeline_refuses_a_fixed_shape_graph_at_another_size_before_launch(
    onnx_graph, tmp_path
):
    from tests.e2e.cli import run_module

    slides = tmp_path / "slides.csv"
    slides.write_text("slide_id,uri\ns,/nowhere.svs\n")
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", str(slides), "--model", f"m={onnx_graph}", "--patch_px", "96"),
        *("--output", str(tmp_path / "out")),
    )
    assert done.returncode == 2
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "its ONNX graph takes fixed 64x64 inputs" in line and "96x96 (--patch_px)" in line
    assert not (tmp_path / "out").exists()


def test_a_recipes_guard_tolerances_apply_under_the_users_guard_flags():
    from types import SimpleNamespace

    from pipelines.options import model_guard

    def flags(**given):
        names = ("guard_min_agreement", "guard_max_prob_diff", "guard_min_cosine")
        return SimpleNamespace(**{**dict.fromkeys(names), **given}, precision_strict=False)

    recipe = {"min_agreement": 0.9, "min_cosine": 0.99}
    guard = model_guard(recipe, flags())
    assert (guard.min_agreement, guard.max_prob_diff, guard.min_cosine) == (0.9, 0.02, 0.99)
    guard = model_guard(recipe, flags(guard_min_agreement=0.95))
    assert guard.min_agreement == 0.95 and guard.min_cosine == 0.99
