"""How a job's models compose: gates (``--gate``), slide-level heads (``--slide_model``) and the
resource hints each stage asks for (``--model_hints``), read from the flags and checked before
anything starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.flags import named_values
from transforms.core.errors import ConfigError
from transforms.models.spec import ACTIVATIONS, ModelSpec
from transforms.slides.gates import GateRule, gate_order, parse_gate
from transforms.slides.heads import SLIDE_MAX_PATCHES, HeadSpec


@dataclass(frozen=True)
class Composition:
    """The job's gates by gated model, its slide heads, and resource hints by stage name."""

    gates: dict[str, GateRule] = field(default_factory=dict)
    heads: tuple[HeadSpec, ...] = ()
    hints: dict[str, dict[str, str]] = field(default_factory=dict)
    slide_max_patches: int = SLIDE_MAX_PATCHES

    def edges(self) -> tuple[dict[str, str], ...]:
        """The composition as a graph: ``{source, target, kind, rule}`` per gate and head."""
        gates = [
            {"source": r.gate, "target": r.model, "kind": "gate", "rule": r.text}
            for r in self.gates.values()
        ]
        heads = [
            {"source": h.encoder, "target": h.name, "kind": "head", "rule": ""} for h in self.heads
        ]
        return tuple(gates + heads)


def parse_hints(text: str, flag: str) -> dict[str, str]:
    """``accelerator=type:nvidia-l4;count:1;install-nvidia-driver;min_ram=32GB`` -> hints.

    Items are split at ``;``; an item without ``=`` continues the previous value (Dataflow's
    accelerator value holds ``;`` itself). Each hint must be one Beam knows, with a value it
    parses."""
    from apache_beam.transforms.resources import ResourceHint

    hints: dict[str, str] = {}
    last = None
    for item in text.split(";"):
        name, sep, value = item.partition("=")
        if sep and name.strip().isidentifier():
            last = name.strip()
            hints[last] = value.strip()
        elif last is not None:
            hints[last] += ";" + item.strip()
        else:
            raise ConfigError(f"{flag}: expected HINT=VALUE, got {item!r}")
    for name, value in hints.items():
        if not ResourceHint.is_registered(name):
            raise ConfigError(
                f"{flag}: {name!r} is not a Beam resource hint (accelerator, min_ram, cpu_count, "
                "max_active_bundles_per_worker)"
            )
        try:
            ResourceHint.get_by_name(name).parse(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{flag}: {name}={value!r}: {exc}") from None
    return hints


def composition(options: PipelineOptions, models: tuple[ModelSpec, ...]) -> Composition:
    """The job's composition from its flags; ``ConfigError`` naming the flag."""
    given = options.get_all_options()
    specs = {m.name: m for m in models}
    cover = given.get("gate_cover") or "centre"
    gates = {
        name: parse_gate(name, text, specs, cover)
        for name, text in named_values(given.get("gate") or [], "--gate").items()
    }
    gate_order(list(specs), gates)  # a cycle fails here, before launch
    heads = _heads(given, specs)
    for head in heads:
        if head.name in specs:
            raise ConfigError(f"--slide_model {head.name}: also a --model name; name it apart")
    hints: dict[str, dict[str, str]] = {}
    stages = set(specs) | {h.name for h in heads}
    for name, text in named_values(given.get("model_hints") or [], "--model_hints").items():
        if name not in stages:
            raise ConfigError(f"--model_hints names {name}, which no --model or --slide_model is")
        hints[name] = parse_hints(text, f"--model_hints {name}")
    max_patches = given.get("slide_max_patches") or SLIDE_MAX_PATCHES
    if max_patches < 1:
        raise ConfigError(f"--slide_max_patches must be >= 1, got {max_patches}")
    return Composition(gates, heads, hints, max_patches)


def _heads(given: dict[str, Any], specs: dict[str, ModelSpec]) -> tuple[HeadSpec, ...]:
    uris = named_values(given.get("slide_model") or [], "--slide_model")
    inputs = named_values(given.get("slide_model_input") or [], "--slide_model_input")
    classes = named_values(given.get("slide_class_names") or [], "--slide_class_names")
    activations = named_values(
        given.get("slide_model_activation") or [], "--slide_model_activation"
    )
    for flag, values in (
        ("--slide_model_input", inputs),
        ("--slide_class_names", classes),
        ("--slide_model_activation", activations),
    ):
        unknown = sorted(set(values) - set(uris))
        if unknown:
            raise ConfigError(f"{flag} names {', '.join(unknown)}, which no --slide_model defines")
    heads = []
    for name, uri in uris.items():
        if not uri.endswith((".pt2", ".onnx")):
            raise ConfigError(f"--slide_model {name}={uri}: a slide head is a .pt2 or .onnx file")
        encoder = inputs.get(name)
        if encoder is None:
            raise ConfigError(f"--slide_model {name} needs --slide_model_input {name}=ENCODER")
        spec = specs.get(encoder)
        if spec is None or spec.output_kind != "embedding":
            raise ConfigError(
                f"--slide_model_input {name}={encoder}: not an embedding --model of this job "
                "(--model_output ENCODER=embedding)"
            )
        activation = activations.get(name, "softmax")
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"--slide_model_activation {name}={activation}: one of {', '.join(ACTIVATIONS)}"
            )
        names = tuple(n.strip() for n in classes[name].split(",")) if name in classes else ()
        heads.append(HeadSpec(name, uri, encoder, names, activation, require_gpu=spec.require_gpu))
    return tuple(heads)
