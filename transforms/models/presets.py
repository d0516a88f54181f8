"""Presets for the pathology foundation models users bring: their recipes by name.

``--preset uni=uni2-h`` gives model ``uni`` the recipe of UNI2-h (``presets.json``: input size and
resolution, mean/std, pooling, embedding size, each fact with its source). A ``recipe.json`` in
the folder still overrides a field, and flags override both (``recipe.apply_recipe``).

Weights are never downloaded: the user brings the folder (a timm ``config.json`` with
``pytorch_model.bin`` or ``model.safetensors``, or a Hugging Face ``save_pretrained`` folder), and
``folder_differences`` checks before launch that it is the preset's architecture (hidden size,
patch size, register tokens), from its ``config.json`` and, for safetensors, the tensor shapes in
the file's header (a few KB read, not the weights). ``weights_differences`` checks the same from
the weights themselves when a worker loads them.
"""

from __future__ import annotations

import functools
import json
import struct
from importlib import resources
from typing import Any

from transforms.core.errors import ConfigError

PRESETS_FILE = "presets.json"
TIMM = "timm"
_CHECKED = (
    ("embed_dim", "hidden size"),
    ("patch_size", "patch size"),
    ("reg_tokens", "register tokens"),
)
SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"


@functools.cache
def presets() -> dict[str, dict[str, Any]]:
    """Every preset by name (``presets.json``, shipped with the package)."""
    text = resources.files("transforms.models").joinpath(PRESETS_FILE).read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("$")}


def preset_names() -> tuple[str, ...]:
    return tuple(presets())


def preset(name: str) -> dict[str, Any]:
    """The preset ``name``; ``ConfigError`` listing the known ones otherwise."""
    known = presets()
    if name not in known:
        raise ConfigError(f"`preset` {name!r}: one of {', '.join(known)}")
    return known[name]


def weight_files(name: str) -> tuple[str, ...]:
    """The file names a preset's weights may have, in the order they are looked for."""
    return tuple(preset(name).get("weights") or (SAFETENSORS, TORCH_BIN))


def trunk_shapes(name: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The ViT's tensors among a checkpoint's (CONCH v1.5 keeps its ViT under ``trunk.``)."""
    prefix = preset(name)["architecture"].get("prefix", "")
    return {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}


def preset_format(name: str) -> str:
    """How a preset's folder is stored: ``timm`` or ``huggingface``."""
    return str(preset(name)["format"])


def _config_facts(config: dict[str, Any], fmt: str) -> dict[str, tuple[Any, str]]:
    """What a folder's config.json says of the checked facts: value and where it was read."""
    facts: dict[str, tuple[Any, str]] = {}
    if fmt == TIMM:
        args = config.get("model_args") or {}
        if "embed_dim" in args:
            facts["embed_dim"] = (args["embed_dim"], "config.json model_args.embed_dim")
        elif "num_features" in config:
            facts["embed_dim"] = (config["num_features"], "config.json num_features")
        if "patch_size" in args:
            facts["patch_size"] = (args["patch_size"], "config.json model_args.patch_size")
        if "reg_tokens" in args:
            facts["reg_tokens"] = (args["reg_tokens"], "config.json model_args.reg_tokens")
    else:
        for fact, key in (
            ("embed_dim", "hidden_size"),
            ("patch_size", "patch_size"),
            ("reg_tokens", "num_register_tokens"),
        ):
            if key in config:
                facts[fact] = (config[key], f"config.json {key}")
        if "model_type" in config:
            facts["model_type"] = (config["model_type"], "config.json model_type")
    return facts


def _differences(name: str, wanted: dict[str, Any], found: dict[str, tuple[Any, str]]) -> list[str]:
    said = []
    for fact, words in (*_CHECKED, ("model_type", "model type")):
        if fact in wanted and fact in found and found[fact][0] != wanted[fact]:
            value, where = found[fact]
            said.append(f"{words} {value} ({where}); {name} has {wanted[fact]}")
    return said


def safetensors_shapes(read: Any) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's header; ``read(n)`` reads the next n bytes."""
    (length,) = struct.unpack("<Q", read(8))
    if length > 100 << 20:
        raise ValueError(f"a safetensors header of {length} bytes")
    header = json.loads(read(length))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def shape_facts(
    name: str, shapes: dict[str, tuple[int, ...]], where: str
) -> dict[str, tuple[Any, str]]:
    """The checked facts of preset ``name``'s kind of network, from its tensor shapes."""
    from transforms.models.vit import shape_of

    if preset(name)["architecture"].get("family") == "swin":
        if "norm.weight" not in shapes or "patch_embed.proj.6.weight" not in shapes:
            return {"embed_dim": ("no ConvStem Swin (no norm / patch_embed.proj.6)", where)}
        return {"embed_dim": (shapes["norm.weight"][0], f"{where} norm")}

    try:
        shape = shape_of(shapes)
    except ValueError as exc:
        return {"embed_dim": (str(exc), where)}
    return {
        "embed_dim": (shape.embed_dim, f"{where} cls_token"),
        "patch_size": (shape.patch_size, f"{where} patch_embed.proj"),
        "reg_tokens": (shape.reg_tokens, f"{where} reg_token"),
    }


def folder_differences(name: str, uri: str) -> list[str]:
    """How the folder at ``uri`` differs from preset ``name``'s architecture (empty: none
    found), from its config.json and a safetensors header. ``ConfigError`` when it lacks the
    files the preset's format needs."""
    from transforms.core.remote_io import filesystem

    wanted = preset(name)["architecture"]
    fmt = preset_format(name)
    fs, path = filesystem(uri)
    base = path.rstrip("/")
    if not fs.isdir(base):
        raise ConfigError(f"`preset` {name}: {uri} is not a folder (bring the model's folder)")
    files = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False)}
    names = weight_files(name)
    needs_config = preset(name).get("config", True)
    if (needs_config and "config.json" not in files) or not set(names) & files:
        raise ConfigError(
            f"`preset` {name}: {uri} needs {'config.json and ' if needs_config else ''}"
            f"{' or '.join(names)} (it has {', '.join(sorted(files)) or 'nothing'})"
        )
    found: dict[str, tuple[Any, str]] = {}
    if needs_config:
        with fs.open(f"{base}/config.json", "rb") as f:
            try:
                config = json.loads(f.read())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"`preset` {name}: {uri}/config.json is not JSON ({exc})"
                ) from None
        if not isinstance(config, dict):
            raise ConfigError(f"`preset` {name}: {uri}/config.json is not a JSON object")
        found = _config_facts(config, fmt)
    header = next((n for n in names if n in files and n.endswith(".safetensors")), None)
    if fmt == TIMM and header is not None:
        with fs.open(f"{base}/{header}", "rb") as f:
            try:
                shapes = trunk_shapes(name, safetensors_shapes(f.read))
            except (ValueError, KeyError, TypeError, struct.error) as exc:
                raise ConfigError(
                    f"`preset` {name}: {uri}/{header} is not a safetensors file ({exc})"
                ) from None
        # the weights' own shapes are the truth where config.json says otherwise
        found |= {k: v for k, v in shape_facts(name, shapes, header).items() if k in wanted}
    return _differences(name, wanted, found)


def check_folder(model: str, name: str, uri: str) -> None:
    """``ConfigError`` naming each difference of the folder from preset ``name``."""
    said = folder_differences(name, uri)
    if said:
        raise ConfigError(
            f"--preset {model}={name}: {uri} is not {preset(name)['title']}: {'; '.join(said)}"
        )


def weights_differences(name: str, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """How loaded weights' shapes differ from preset ``name``'s architecture."""
    facts = shape_facts(name, trunk_shapes(name, shapes), "the weights")
    return _differences(name, preset(name)["architecture"], facts)
