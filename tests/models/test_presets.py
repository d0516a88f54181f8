"""Foundation-model presets: a random-weight model of each preset's real architecture (its widths,
patch size, register tokens and MLP, two blocks deep), saved as the model's folder ships, run by
the pipeline with only ``--preset``: its embeddings equal a direct call on the same patches with
the preset's preprocessing. A folder of another architecture fails before launch, naming how."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from tests.models.test_model_kinds import normalised, pixels_of  # noqa: E402
from transforms.models.presets import preset, presets  # noqa: E402
from transforms.models.vit import CONCH_TRUNK_GRID, VitShape, build, build_conch  # noqa: E402

pytestmark = [pytest.mark.shared_data]

TIMM = [name for name, p in presets().items() if p["format"] == "timm"]
BOXES = ((0, 0), (900, 1300), (1700, 2400))


def timm_folder(folder, name: str, weights: str | None = None, seed: int = 0):
    """A random-weight model of preset ``name``'s architecture (2 blocks), saved as its authors
    publish it: config.json and the state dict (safetensors, unless the preset's files are
    another)."""
    arch = preset(name)["architecture"]
    weights = weights or preset(name).get("weights", ["model.safetensors"])[0]
    if arch.get("family") == "swin":
        return _ctranspath_folder(folder, weights, seed)
    conch = arch.get("family") == "conch"
    grid = CONCH_TRUNK_GRID if conch else preset(name)["recipe"]["patch_px"] // arch["patch_size"]
    prefix = 0 if arch["no_embed_class"] else 1 + arch["reg_tokens"]
    shape = VitShape(
        embed_dim=arch["embed_dim"],
        patch_size=arch["patch_size"],
        depth=2,
        reg_tokens=arch["reg_tokens"],
        pos_tokens=grid * grid + prefix,
        mlp_hidden=arch["mlp_hidden"],
        layer_scale=True,
    )
    torch.manual_seed(seed)
    if conch:
        module = build_conch(shape, arch["heads"])
    else:
        module = build(shape, arch["heads"], arch["mlp"], arch["pooling"], arch["no_embed_class"])
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    if weights.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    config = {
        "architecture": arch.get("timm", name),
        "num_classes": 0,
        "num_features": arch["embed_dim"],
        "model_args": {
            "embed_dim": arch["embed_dim"],
            "patch_size": arch["patch_size"],
            "reg_tokens": arch["reg_tokens"],
            "depth": 2,
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder), module.eval()


def _ctranspath_folder(folder, weights: str, seed: int):
    """CTransPath's checkpoint as published: ``{"model": state}``, its shifted blocks'
    ``attn_mask`` buffers included, no config.json."""
    from transforms.models.swin import build as build_swin

    torch.manual_seed(seed)
    module = build_swin("conv")
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    state = dict(module.state_dict())
    state.update({f"{k}": v for k, v in module.named_buffers() if k.endswith("attn_mask")})
    folder.mkdir(parents=True)
    torch.save({"model": state}, folder / weights)
    return str(folder), module.eval()


def _run(tmp_path, cmu1, model: str, name: str):
    from pipelines.slide_inference import run

    slides, patches = tmp_path / "slides.csv", tmp_path / "patches.csv"
    slides.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    patches.write_text(
        "slide_id,x_px,y_px,size_px\n"
        + "".join(f"cmu1,{x},{y},{preset(name)['recipe']['patch_px']}\n" for x, y in BOXES)
    )
    out = tmp_path / "out"
    run(
        ["--slides", str(slides), "--patches", str(patches), "--model", f"fm={model}"]
        + ["--preset", f"fm={name}", "--output", str(out), "--no_heatmaps"]
    )
    rows = pd.read_parquet(out / "patch_embeddings").sort_values(["y_px", "x_px"])
    [run_row] = pd.read_parquet(out / "runs").to_dict("records")
    return rows, run_row


def _direct(module, cmu1, rows, name: str) -> np.ndarray:
    recipe = preset(name)["recipe"]
    with torch.inference_mode():
        x = normalised(pixels_of(cmu1, rows), recipe["mean"], recipe["std"])
        return module(x).numpy()


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[] if n == "uni" else [pytest.mark.slow]) for n in TIMM]
)
def test_a_presets_embeddings_equal_a_direct_call_with_its_preprocessing(name, cmu1, tmp_path):
    folder, module = timm_folder(tmp_path / "model", name)
    rows, run_row = _run(tmp_path, cmu1, folder, name)
    assert len(rows) == len(BOXES)
    got = np.stack(rows.embedding.to_numpy())
    assert got.shape == (len(BOXES), preset(name)["recipe"]["embedding_size"])
    np.testing.assert_allclose(got, _direct(module, cmu1, rows, name), atol=1e-5, rtol=0)
    [model] = run_row["models"]
    assert model["recipe"] == f"preset {name}" and model["licence"]


@pytest.mark.slow
def test_a_pytorch_bin_folder_loads_too(cmu1, tmp_path):
    folder, module = timm_folder(tmp_path / "model", "virchow2", weights="pytorch_model.bin")
    rows, _ = _run(tmp_path, cmu1, folder, "virchow2")
    got = np.stack(rows.embedding.to_numpy())
    np.testing.assert_allclose(got, _direct(module, cmu1, rows, "virchow2"), atol=1e-5, rtol=0)


def test_phikon_v2s_preset_takes_the_class_token_of_its_dinov2_folder(cmu1, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=1024,
        num_hidden_layers=2,
        num_attention_heads=16,
        patch_size=16,
        image_size=224,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    encoder = transformers.Dinov2Model(config).eval()
    folder = tmp_path / "phikon"
    encoder.save_pretrained(folder)
    rows, _ = _run(tmp_path, cmu1, str(folder), "phikon-v2")
    got = np.stack(rows.embedding.to_numpy())
    recipe = preset("phikon-v2")["recipe"]
    with torch.inference_mode():
        x = normalised(pixels_of(cmu1, rows), recipe["mean"], recipe["std"])
        direct = encoder(pixel_values=x).last_hidden_state[:, 0].numpy()
    assert got.shape == (len(BOXES), 1024)
    np.testing.assert_allclose(got, direct, atol=1e-5, rtol=0)


def test_a_folder_of_another_architecture_fails_before_launch_naming_how(cmu1, tmp_path):
    from tests.e2e.cli import run_module

    folder, _ = timm_folder(tmp_path / "model", "uni")
    slides = tmp_path / "slides.csv"
    slides.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    done = run_module(
        "pipelines.slide_inference",
        *("--slides", str(slides), "--model", f"fm={folder}", "--preset", "fm=uni2-h"),
        *("--output", str(tmp_path / "out")),
    )
    assert done.returncode == 2
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "is not UNI2-h (ViT-H/14, 8 registers, MahmoodLab)" in line
    assert "hidden size 1024 (model.safetensors cls_token); uni2-h has 1536" in line
    assert "patch size 16" in line and "register tokens 0" in line
    assert not (tmp_path / "out").exists()


def test_weights_that_contradict_their_config_are_refused_by_their_shapes(tmp_path):
    """A config.json that claims the preset's architecture does not hide weights of another:
    the safetensors header (read before launch) tells."""
    from transforms.core.errors import ConfigError
    from transforms.models.presets import check_folder

    folder, _ = timm_folder(tmp_path / "model", "uni")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["model_args"].update(embed_dim=1536, patch_size=14, reg_tokens=8)
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="hidden size 1024 \\(model.safetensors cls_token\\)"):
        check_folder("fm", "uni2-h", folder)


def test_describe_and_check_take_a_preset(tmp_path):
    from tests.processes import run_python

    folder, _ = timm_folder(tmp_path / "model", "h-optimus-0")
    described = run_python("-m", "pipelines.models", "describe", folder, "--preset", "h-optimus-0")
    assert described.returncode == 0, described.stderr
    assert "format    timm" in described.stdout and "output    output: 2 x 1536" in described.stdout
    checked = run_python("-m", "pipelines.models", "check", folder, "--preset", "h-optimus-0")
    assert checked.returncode == 0 and "does what its recipe says" in checked.stdout
    wrong = run_python("-m", "pipelines.models", "check", folder, "--preset", "uni")
    assert (
        wrong.returncode == 2 and "hidden size 1536 (model.safetensors cls_token)" in wrong.stderr
    )


@pytest.mark.parametrize(
    ("broken", "said"),
    [
        ("config.json", "config.json is not JSON"),
        ("model.safetensors", "model.safetensors is not a safetensors file"),
    ],
)
def test_a_broken_folder_fails_before_launch_naming_the_file(tmp_path, broken, said):
    from transforms.core.errors import ConfigError
    from transforms.models.presets import check_folder

    folder, _ = timm_folder(tmp_path / "model", "uni")
    (tmp_path / "model" / broken).write_bytes(b"\xff\xff\xff\xff not what it claims")
    with pytest.raises(ConfigError, match=said):
        check_folder("fm", "uni", folder)
