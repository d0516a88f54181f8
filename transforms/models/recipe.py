"""A model's recipe: how to feed it and what its outputs mean, kept beside its weights.

For a file ``x.onnx`` / ``x.pt2`` / ``x.pth`` the recipe is ``x.recipe.json``; in a model folder
(Hugging Face, ONNX with external data) it is ``recipe.json``. A Hugging Face ``config.json``
with ``id2label`` gives the class names where there is no recipe. The recipe is checked against
``recipe.schema.json`` (``python -m pipelines.models schema`` writes it from ``RECIPE_SCHEMA``;
a test keeps them equal), and an error names the field.

The recipe gives a model's defaults; a ``--model_*`` flag overrides a field only where the user
gives it, and each override is said at launch and recorded in the runs row
(``ModelSpec.overrides``).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

from transforms.core.errors import ConfigError
from transforms.models.kinds import OUTPUT_KINDS
from transforms.models.spec import (
    ACTIVATIONS,
    INPUTS,
    MODALITIES,
    PATCH_PX_RANGE,
    STAIN_METHODS,
)

SCHEMA_ID = "https://pathbeam.dev/schemas/recipe-1.json"
_SLIDE_METHOD = {
    "brightfield_he": "brightfield",
    "brightfield_ihc": "brightfield",
    "fluorescence": "fluorescence",
}
"""The slide kind (the survey's tissue method) each modality takes. The survey tells
brightfield from fluorescence, not H&E from IHC: both brightfield modalities take any
brightfield slide."""


def modality_refuses(modality: str, slide_method: str | None) -> bool:
    """Whether a model made for ``modality`` must not run on a slide the survey found to be
    ``slide_method`` (``brightfield`` or ``fluorescence``; None: not known, so not refused)."""
    wanted = _SLIDE_METHOD.get(modality)
    return wanted is not None and slide_method is not None and slide_method != wanted


def modality_refusal(name: str, modality: str, slide_id: str, slide_method: str) -> str:
    """The dead letter's message for a slide a model refuses."""
    words = modality.replace("brightfield_he", "brightfield H&E").replace(
        "brightfield_ihc", "brightfield IHC"
    )
    return (
        f"model {name!r} expects {words} slides; slide {slide_id!r} is {slide_method} "
        f"(--allow_modality {name}=any runs it anyway)"
    )


RECIPE_FILE = "recipe.json"
RECIPE_SUFFIX = ".recipe.json"

_THREE = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
_NAMES = {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True}


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe; enumerations from the code's own lists."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "pathbeam model recipe",
        "description": "How to feed a model and what its outputs mean, kept beside its weights.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "$schema": {"type": "string"},
            "description": {"type": "string"},
            "output_kind": {"enum": list(OUTPUT_KINDS)},
            "activation": {"enum": list(ACTIVATIONS)},
            "class_names": _NAMES,
            "class_colours": {
                "type": "array",
                "items": {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"},
                "description": "one #rrggbb per class, for pictures",
            },
            "input": {"enum": list(INPUTS), "description": "rgb, or eho stain channels"},
            "mean": {**_THREE, "description": "per-channel mean, inputs scaled to 0..1"},
            "std": {**_THREE, "description": "per-channel std, inputs scaled to 0..1"},
            "patch_px": {
                "type": "integer",
                "minimum": PATCH_PX_RANGE[0],
                "maximum": PATCH_PX_RANGE[1],
            },
            "patch_mpp": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
            "min_tissue": {"type": "number", "minimum": 0, "maximum": 1},
            "embedding_key": {"type": "string", "minLength": 1},
            "embedding_size": {"type": "integer", "minimum": 1},
            "modality": {"enum": list(MODALITIES)},
            "licence": {"type": "string"},
            "citation": {"type": "string"},
            "mpp_tolerance": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "how much coarser than patch_mpp a slide may be (0.1: 10%); a "
                "coarser slide is a dead letter for this model",
            },
            "guard": {
                "type": "object",
                "additionalProperties": False,
                "description": "the model's own accuracy-guard tolerances (reduced precision)",
                "properties": {
                    "min_agreement": {"type": "number", "minimum": 0, "maximum": 1},
                    "max_prob_diff": {"type": "number", "minimum": 0, "maximum": 1},
                    "min_cosine": {"type": "number", "minimum": -1, "maximum": 1},
                },
            },
            "stain_norm": {
                "enum": list(STAIN_METHODS),
                "description": "normalise patches towards stain_reference (Macenko, Reinhard)",
            },
            "stain_reference": {
                "description": "the reference stain: a URI (relative to this recipe) of a JSON "
                "object or an H&E image, or the object itself (optical densities in log10)",
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "source": {"type": "string"},
                            "h": _THREE,
                            "e": _THREE,
                            "max_c": {**_THREE, "minItems": 2, "maxItems": 2},
                            "io": {"type": "number", "minimum": 1, "maximum": 255},
                            "lab_mean": _THREE,
                            "lab_std": _THREE,
                        },
                    },
                ],
            },
        },
    }


SPEC_FIELDS = (
    "output_kind",
    "activation",
    "class_names",
    "class_colours",
    "input",
    "mean",
    "std",
    "patch_px",
    "patch_mpp",
    "min_tissue",
    "embedding_key",
    "modality",
    "licence",
    "citation",
    "stain_norm",
    "stain_reference",
    "mpp_tolerance",
)
"""Recipe fields that are ``ModelSpec`` fields (most may be set by a flag too)."""


@dataclass(frozen=True)
class Recipe:
    uri: str
    """Where it was read (a recipe file, or a config.json it was derived from)."""
    values: dict[str, Any]

    def spec_fields(self) -> dict[str, Any]:
        """The recipe's ``ModelSpec`` fields (lists as tuples)."""
        return {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in self.values.items()
            if k in SPEC_FIELDS
        }

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def recipe_uri(model_uri: str, model_format: str) -> str:
    """Where ``model_uri``'s recipe is: beside a file, or inside a folder."""
    path = model_uri.rstrip("/")
    if model_format == "huggingface":
        return f"{path}/{RECIPE_FILE}"
    stem, ext = posixpath.splitext(path)
    return f"{stem if ext else path}{RECIPE_SUFFIX}"


def relative_to(recipe_uri: str, uri: str) -> str:
    """``uri`` as a recipe names it: relative to the recipe's folder unless absolute."""
    if "://" in uri or uri.startswith("/"):
        return uri
    return posixpath.join(posixpath.dirname(recipe_uri), uri)


def check_recipe(values: Any, where: str) -> dict[str, Any]:
    """``values`` if it is a valid recipe; ``ConfigError`` naming the field otherwise."""
    import jsonschema

    schema = recipe_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        field = ".".join(str(p) for p in first.absolute_path)
        if first.validator == "additionalProperties":
            unknown = sorted(set(values) - set(schema["properties"]))
            raise ConfigError(
                f"recipe {where}: unknown field {', '.join(map(repr, unknown))} (see "
                "transforms/models/recipe.schema.json)"
            )
        raise ConfigError(f"recipe {where}: `{field or '(the recipe)'}` {first.message}")
    names, colours = values.get("class_names"), values.get("class_colours")
    if names is not None and colours is not None and len(names) != len(colours):
        raise ConfigError(
            f"recipe {where}: `class_colours` has {len(colours)} colours for {len(names)} classes"
        )
    return values


def _read_json(uri: str) -> Any | None:
    """The JSON at ``uri``, or None if there is no such file; ``ConfigError`` if unreadable."""
    from transforms.core.remote_io import filesystem

    fs, path = filesystem(uri)
    if not fs.exists(path):
        return None
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {uri}: not valid JSON ({exc})") from None


def load_recipe(model_uri: str, model_format: str) -> Recipe | None:
    """The recipe of the model at ``model_uri``: its recipe file, else what a Hugging Face
    ``config.json`` says (``id2label`` as class names), else None."""
    where = recipe_uri(model_uri, model_format)
    values = _read_json(where)
    if values is not None:
        return Recipe(where, check_recipe(values, where))
    if model_format == "onnx":
        return _onnx_metadata_recipe(model_uri)
    if model_format == "huggingface":
        config_uri = f"{model_uri.rstrip('/')}/config.json"
        config = _read_json(config_uri)
        labels = (config or {}).get("id2label") or {}
        if labels and not all(str(v).startswith("LABEL_") for v in labels.values()):
            names = [str(labels[k]) for k in sorted(labels, key=int)]
            return Recipe(config_uri, {"class_names": names})
    return None


METADATA_RECIPE = "pathbeam.recipe"
"""The ONNX ``metadata_props`` key whose value is a whole recipe, as JSON."""
METADATA_CLASSES = ("class_names", "classes", "labels")
"""``metadata_props`` keys read as class names (a JSON list, or names separated by commas)."""


def _onnx_metadata_recipe(model_uri: str) -> Recipe | None:
    """A recipe from an ONNX graph's own ``metadata_props``: a whole recipe under
    ``pathbeam.recipe``, else class names under one of ``METADATA_CLASSES``."""
    from transforms.models.onnx_header import onnx_header

    try:
        metadata = onnx_header(model_uri).metadata
    except (OSError, ValueError):
        return None  # not readable now: preflight and the load say why
    where = f"{model_uri}#metadata_props"
    if METADATA_RECIPE in metadata:
        try:
            values = json.loads(metadata[METADATA_RECIPE])
        except ValueError as exc:
            raise ConfigError(f"recipe {where}: {METADATA_RECIPE} is not JSON ({exc})") from None
        return Recipe(where, check_recipe(values, where))
    for key in METADATA_CLASSES:
        if key in metadata:
            text = metadata[key].strip()
            try:
                names = json.loads(text) if text.startswith("[") else text.split(",")
            except ValueError:
                names = text.split(",")
            values = {"class_names": [str(n).strip() for n in names]}
            return Recipe(f"{where}[{key}]", check_recipe(values, where))
    return None


def check_fixed_size(name: str, model_uri: str, patch_px: int, how: str) -> None:
    """An ONNX graph built for one input size refuses any other patch edge: ``ConfigError``
    before launch (``how``: where the edge came from, for the message)."""
    from transforms.models.onnx_header import onnx_header

    try:
        size = onnx_header(model_uri).image_size()
    except (OSError, ValueError):
        return
    if size is not None and size != (patch_px, patch_px):
        raise ConfigError(
            f"`patch_px` of {name}: its ONNX graph takes fixed {size[0]}x{size[1]} inputs, but "
            f"its patches would be {patch_px}x{patch_px} ({how}); set --model_patch_px "
            f"{name}={size[0]} or its recipe's patch_px"
        )


def with_preset(name: str, recipe: Recipe | None) -> Recipe:
    """Preset ``name``'s recipe (``presets.json``), with the folder's own recipe over it."""
    from transforms.models.presets import preset

    values = dict(preset(name)["recipe"])
    if recipe is None:
        return Recipe(f"preset {name}", values)
    return Recipe(f"preset {name} + {recipe.uri}", {**values, **recipe.values})


JOB_FIELDS = ("patch_px", "patch_mpp", "min_tissue")
"""Recipe fields a job-wide flag (``--patch_px``...) also gives, for every model at once."""


def apply_recipe(
    name: str, recipe: Recipe | None, flagged: dict[str, Any], job: dict[str, Any]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A model's spec fields: the recipe's, with the flags the user gave on top (its own
    per-model flags first, then the job-wide ones of ``JOB_FIELDS`` that the recipe sets); and
    each override said as ``patch_px 200 overrides the recipe's 320``. Without a recipe, the
    per-model flags alone (the job's geometry applies as it is)."""
    if recipe is None:
        return dict(flagged), ()
    base = recipe.spec_fields()
    asked = {**{k: v for k, v in job.items() if k in base}, **flagged}
    _refuse_contradictions(name, recipe, base, asked)
    overrides = tuple(
        f"{field} {_said(value)} overrides the recipe's {_said(base[field])}"
        for field, value in asked.items()
        if field in base and _same(value) != _same(base[field])
    )
    return {**base, **asked}, overrides


def _refuse_contradictions(
    name: str, recipe: Recipe, base: dict[str, Any], asked: dict[str, Any]
) -> None:
    """Flags that cannot work with what the recipe says the model is: ``ConfigError``."""
    kind = asked.get("output_kind")
    if kind is not None and "output_kind" in base and kind != base["output_kind"]:
        raise ConfigError(
            f"`output_kind` {name}={kind}: the recipe ({recipe.uri}) says the model gives "
            f"{base['output_kind']} outputs; correct the recipe if the model changed"
        )
    names, known = asked.get("class_names"), base.get("class_names")
    if names is not None and known is not None and len(names) != len(known):
        raise ConfigError(
            f"`class_names` {name}= gives {len(names)} names ({', '.join(names)}), but the "
            f"model has {len(known)} classes ({', '.join(known)}: its recipe, {recipe.uri})"
        )


def _same(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def _said(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)
