"""A foundation model's network from the folder its authors publish, as its preset says.

The preset (``presets.json``) names the network's family: a timm ViT (``vit.build``), CONCH
v1.5's vision tower (``vit.build_conch``) or CTransPath's Swin (``swin.build``). The weights are
read (``model.safetensors``, ``pytorch_model.bin`` or the preset's own file name), their shapes
checked against the preset (another architecture fails, naming how it differs), and loaded
strictly. torch is imported here only, lazily.
"""

from __future__ import annotations

import os
from typing import Any

from transforms.core.errors import ModelLoadError
from transforms.models.local_copy import local_folder
from transforms.models.presets import preset, trunk_shapes, weight_files, weights_differences
from transforms.models.spec import ModelSpec


def _state(spec: ModelSpec) -> dict[str, Any]:
    import torch

    assert spec.preset is not None
    folder = local_folder(spec.uri)
    paths = [os.path.join(folder, n) for n in weight_files(spec.preset)]
    path = next((p for p in paths if os.path.exists(p)), None)
    if path is None:
        raise FileNotFoundError(f"none of {', '.join(weight_files(spec.preset))} in {spec.uri}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return dict(load_file(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if preset(spec.preset)["architecture"].get("family") == "swin":
        from transforms.models.swin import ctranspath_state

        state = ctranspath_state(state)
    return dict(state)


def _network(name: str, state: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Any:
    """The preset's network for these weights (``state`` adapted where its loader does)."""
    from transforms.models import swin, vit

    arch = preset(name)["architecture"]
    family = arch.get("family", "vit")
    if family == "swin":
        return swin.build("conv")
    if family == "conch":
        key = arch["prefix"] + "pos_embed"
        state[key] = vit.resample_grid(state[key], 1, vit.CONCH_TRUNK_GRID)
        return vit.build_conch(vit.shape_of(trunk_shapes(name, shapes)), arch["heads"])
    shape = vit.shape_of(shapes)
    return vit.build(shape, arch["heads"], arch["mlp"], arch["pooling"], arch["no_embed_class"])


def foundation_module(spec: ModelSpec) -> Any:
    """The model of ``spec``'s preset folder, its weights loaded strictly, in eval mode."""
    assert spec.preset is not None
    state = _state(spec)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    differences = weights_differences(spec.preset, shapes)
    if differences:
        raise ModelLoadError(
            f"the weights are not {preset(spec.preset)['title']}: {'; '.join(differences)}"
        )
    module = _network(spec.preset, state, shapes)
    module.load_state_dict(state, strict=True)
    return module.eval()
