"""``python -m pipelines.models``: a model's recipe, written, described and checked.

    python -m pipelines.models describe URI [--preset P]  recipe, format, input/output shapes
    python -m pipelines.models init URI [flags]      write URI's recipe from the flags you use
    python -m pipelines.models check URI [--preset P]     load it, run one blank batch, compare
    python -m pipelines.models schema                the recipe's JSON Schema

``init`` takes the slide pipeline's per-model flags, with or without ``NAME=`` (``--model_output
shell=segmentation`` or ``--model_output segmentation``), the job flags a recipe also holds
(``--patch_px``, ``--patch_mpp``, ``--min_tissue``) and ``--modality``,
``--embedding_size``, ``--licence``, ``--citation``, ``--description``.
Exit codes: 0 done; 1 the model does not do what its recipe says; 2 a bad recipe or flag.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipelines.options import stain_reference
from transforms.core.errors import ConfigError, printable
from transforms.models.presets import check_folder
from transforms.models.recipe import (
    SCHEMA_ID,
    check_recipe,
    load_recipe,
    recipe_schema,
    recipe_uri,
    with_preset,
)
from transforms.models.spec import ModelSpec, model_format

# recipe field -> (the flags that give it, how its text becomes a value)
_INIT_FLAGS: dict[str, tuple[tuple[str, ...], Any]] = {
    "output_kind": (("--model_output",), str),
    "activation": (("--model_activation",), str),
    "input": (("--model_input",), str),
    "class_names": (("--class_names",), lambda t: t.split(",")),
    "mean": (("--model_mean",), lambda t: [float(v) for v in t.split(",")]),
    "std": (("--model_std",), lambda t: [float(v) for v in t.split(",")]),
    "patch_px": (("--patch_px", "--model_patch_px"), int),
    "patch_mpp": (("--patch_mpp", "--model_mpp"), float),
    "min_tissue": (("--min_tissue",), float),
    "embedding_key": (("--embedding_key",), str),
    "embedding_size": (("--embedding_size",), int),
    "modality": (("--modality",), str),
    "stain_norm": (("--stain_norm", "--model_stain"), str),
    "stain_reference": (("--stain_reference",), str),
    "licence": (("--licence",), str),
    "citation": (("--citation",), str),
    "description": (("--description",), str),
}


def _value(text: str) -> str:
    """``NAME=VALUE`` (as the pipeline takes it) or ``VALUE``."""
    name, sep, value = text.partition("=")
    return value if sep and name.isidentifier() else text


def recipe_from_flags(argv: list[str]) -> dict[str, Any]:
    """A recipe from the flags a user already runs with; ``ConfigError`` naming a bad one."""
    parser = argparse.ArgumentParser(prog="pipelines.models init", allow_abbrev=False)
    for field, (flags, _) in _INIT_FLAGS.items():
        parser.add_argument(*flags, dest=field)
    known, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ConfigError(f"init does not take {' '.join(unknown)}")
    recipe: dict[str, Any] = {"$schema": SCHEMA_ID}
    for field, (flags, convert) in _INIT_FLAGS.items():
        text = getattr(known, field)
        if text is None:
            continue
        try:
            recipe[field] = convert(_value(text))
        except ValueError:
            raise ConfigError(f"{flags[0]}: cannot read {text!r}") from None
    return check_recipe(recipe, "from the flags")


def _spec(uri: str, preset: str | None = None) -> tuple[ModelSpec, dict[str, Any]]:
    fmt = model_format(uri, None)
    recipe = load_recipe(uri, fmt)
    if preset is not None:
        check_folder("model", preset, uri)
        recipe = with_preset(preset, recipe)
    if recipe is None:
        raise ConfigError(f"{uri}: no recipe ({recipe_uri(uri, fmt)}); write one with init")
    fields = recipe.spec_fields()
    fields["stain_reference"] = stain_reference("model", recipe, fields)
    spec = ModelSpec(name="model", uri=uri, recipe=recipe.uri, preset=preset, **fields)
    return spec, recipe.values


def _shapes(spec: ModelSpec) -> tuple[int, dict[str, tuple[int, ...]]]:
    """The patch edge fed, and each raw output's shape for a blank batch of 2."""
    import numpy as np

    from transforms.models.loading import load_model

    px = spec.patch_px or 224
    model = load_model(spec)
    outputs = model.forward([np.full((px, px, 3), 255, np.uint8)] * 2)
    return px, {name: tuple(np.asarray(o).shape) for name, o in outputs.items()}


def describe(uri: str, preset: str | None = None) -> str:
    spec, values = _spec(uri, preset)
    px, shapes = _shapes(spec)
    lines = [
        f"model     {uri}",
        f"format    {spec.format}",
        f"recipe    {spec.recipe}",
        *(f"  {k:<15}{json.dumps(v)}" for k, v in values.items() if k != "$schema"),
        f"input     2 x 3 x {px} x {px} ({spec.input}, mean {spec.mean}, std {spec.std})",
        *(f"output    {name}: {' x '.join(map(str, shape))}" for name, shape in shapes.items()),
    ]
    return "\n".join(printable(line) for line in lines)


def check(uri: str, preset: str | None = None) -> list[str]:
    """What the model does that its recipe does not say (empty: they agree)."""
    spec, values = _spec(uri, preset)
    _, shapes = _shapes(spec)
    found = []
    for name, shape in shapes.items():
        if spec.kind.has_classes and spec.class_names:
            channels = shape[1] if len(shape) > 1 else 1
            if channels != len(spec.class_names):
                found.append(
                    f"output {name} has {channels} channels; the recipe names "
                    f"{len(spec.class_names)} classes ({', '.join(spec.class_names)})"
                )
        if spec.output_kind == "embedding" and "embedding_size" in values:
            if shape[-1] != values["embedding_size"]:
                found.append(
                    f"output {name} ends in {shape[-1]} values; the recipe's embedding_size is "
                    f"{values['embedding_size']}"
                )
        if spec.output_kind == "segmentation" and len(shape) != 4:
            found.append(f"output {name} is {shape}: a segmentation model gives N x C x H x W")
    return found


def init(uri: str, argv: list[str], force: bool) -> str:
    from transforms.core.remote_io import filesystem

    recipe = recipe_from_flags(argv)
    target = recipe_uri(uri, model_format(uri, None))
    fs, path = filesystem(target)
    if fs.exists(path) and not force:
        raise ConfigError(f"{target} exists; --force replaces it")
    with fs.open(path, "w") as f:
        f.write(json.dumps(recipe, indent=2) + "\n")
    return target


def _preset_arg(rest: list[str]) -> str | None:
    """``--preset NAME`` of describe and check (a foundation model's folder)."""
    if not rest:
        return None
    if len(rest) != 2 or rest[0] != "--preset":
        raise ConfigError(f"unexpected {' '.join(rest)} (describe and check take --preset NAME)")
    return rest[1]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if (
        not args
        or args[0] in ("-h", "--help")
        or args[0]
        not in (
            "describe",
            "init",
            "check",
            "schema",
        )
    ):
        print(__doc__)
        return 0 if args and args[0] in ("-h", "--help") else 2
    command, rest = args[0], args[1:]
    try:
        if command == "schema":
            print(json.dumps(recipe_schema(), indent=2))
            return 0
        if not rest:
            raise ConfigError(f"{command} needs the model's URI")
        uri = rest[0]
        preset = _preset_arg(rest[1:]) if command in ("describe", "check") else None
        if command == "describe":
            print(describe(uri, preset))
        elif command == "init":
            force = "--force" in rest
            target = init(uri, [a for a in rest[1:] if a != "--force"], force)
            print(f"wrote {target}")
        else:
            found = check(uri, preset)
            if found:
                for line in found:
                    print(f"error: {printable(line)}", file=sys.stderr)
                return 1
            print(f"{uri}: the model does what its recipe says")
    except ConfigError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
