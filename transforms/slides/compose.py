"""The model stages of the slide pipeline, composed: patch models (gated or not, hinted or
not) over the planned work units, slide-level heads over their encoders' embeddings, and the
counts at each edge of the composition.

``wire_models`` and ``wire_heads`` apply named transforms at the caller's level (``ReadPatches``,
``Gate/<model>``, ``ReadGatedPatches/<model>``, ``RunModel/<model>``, ``SlideModel/<head>``), so
the job graph's stage names do not depend on how this module is split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

from transforms.core.errors import DEAD_LETTER
from transforms.core.guard import GUARD
from transforms.models.spec import ModelSpec
from transforms.slides.gates import GateRule, GateUnits, gate_order
from transforms.slides.heads import HeadSpec, RunSlideHead
from transforms.slides.read_patches import ByGeometry, ReadPatches, SplitByGeometry
from transforms.slides.run_model import BatchingConfig, RunModel
from transforms.slides.stitch import CLASS_MAPS


@dataclass
class ModelStages:
    """What the patch models give: rows by model, and what every stage adds up."""

    rows: dict[str, beam.PCollection] = field(default_factory=dict)
    errors: list[beam.PCollection] = field(default_factory=list)
    guard: list[beam.PCollection] = field(default_factory=list)
    class_maps: list[beam.PCollection] = field(default_factory=list)
    gated: list[beam.PCollection] = field(default_factory=list)
    verdicts: list[beam.PCollection] = field(default_factory=list)


@dataclass(frozen=True)
class StageConfig:
    """How the patch models run: their patch edge per geometry, batching, the run and the
    default accuracy guard, gates by gated model and resource hints by stage."""

    patch_pxs: tuple[int, ...]
    batching: BatchingConfig
    run_id: str
    guard: Any
    gates: dict[str, GateRule]
    hints: dict[str, dict[str, str]]


def _split_units(units: beam.PCollection, models: Sequence[ModelSpec], cfg: StageConfig) -> Any:
    """The units read once for every ungated model, and each gated model's own units."""
    if not cfg.gates:
        return units, {}
    n = len(cfg.patch_pxs)
    parts = units | "UnitsByGeometry" >> beam.Partition(ByGeometry(), n)
    gated = {m.geometry: parts[m.geometry] for m in models if m.name in cfg.gates}
    ungated = [parts[i] for i in range(n) if i not in gated] | "UngatedUnits" >> beam.Flatten()
    return ungated, gated


def wire_models(
    units: beam.PCollection, models: Sequence[ModelSpec], cfg: StageConfig
) -> ModelStages:
    """Planned work units -> each model's rows. Ungated models share one decoded stream per
    geometry; a gated model's units wait for its gate's rows and are cut down before they are
    read (``gates.GateUnits``); a hinted model runs behind a Reshuffle with its hints."""
    out = ModelStages()
    ungated, gated_units = _split_units(units, models, cfg)
    read = ungated | "ReadPatches" >> ReadPatches()
    out.errors.append(read[DEAD_LETTER])
    streams = read["patches"] | "SplitByGeometry" >> SplitByGeometry(len(cfg.patch_pxs))
    specs = {m.name: m for m in models}
    for name in gate_order(list(specs), cfg.gates):
        spec, rule = specs[name], cfg.gates.get(name)
        stream = streams[spec.geometry]
        if rule is not None:
            kept = {"units": gated_units[spec.geometry], "gate": out.rows[rule.gate]} | (
                f"Gate/{name}" >> GateUnits(rule, spec, specs[rule.gate], cfg.run_id)
            )
            read_kept = kept["units"] | f"ReadGatedPatches/{name}" >> ReadPatches()
            out.errors.append(read_kept[DEAD_LETTER])
            out.gated.append(kept["gated"])
            out.verdicts.append(kept["verdicts"])
            stream = read_kept["patches"]
        stage: beam.PTransform = RunModel(
            spec, cfg.batching, cfg.run_id, cfg.patch_pxs[spec.geometry], spec.guard or cfg.guard
        )
        if name in cfg.hints:  # its own workers: break the fusion with the decode
            stream = stream | f"ToHintedWorkers/{name}" >> beam.Reshuffle()
            stage = stage.with_resource_hints(**cfg.hints[name])
        inferred = stream | f"RunModel/{name}" >> stage
        out.rows[name] = inferred["rows"]
        out.errors.append(inferred[DEAD_LETTER])
        out.guard.append(inferred[GUARD])
        if spec.kind.class_map:
            out.class_maps.append(inferred[CLASS_MAPS])
    return out


@dataclass
class HeadStages:
    predictions: list[beam.PCollection] = field(default_factory=list)
    attention: list[beam.PCollection] = field(default_factory=list)
    errors: list[beam.PCollection] = field(default_factory=list)


def wire_heads(
    embeddings: beam.PCollection,
    infos: beam.PCollection,
    heads: Sequence[HeadSpec],
    hints: dict[str, dict[str, str]],
    **head_args: Any,
) -> HeadStages:
    """Each slide head over its encoder's embeddings (``heads.RunSlideHead``; ``head_args``:
    its run id, patch bound, picture folder and case column)."""
    out = HeadStages()
    for head in heads:
        stage: beam.PTransform = RunSlideHead(head, **head_args)
        if head.name in hints:
            stage = stage.with_resource_hints(**hints[head.name])
        headed = (embeddings, infos) | f"SlideModel/{head.name}" >> stage
        out.predictions.append(headed["predictions"])
        out.attention.append(headed["attention"])
        out.errors.append(headed[DEAD_LETTER])
    return out


def model_counts(summary: dict) -> tuple[str, tuple[int, int, int, int]]:
    """A slide x model's counts for the composition's edges: (planned, with results, held back
    by a gate, 1 if it has results)."""
    n = int(summary["patch_count"])
    held = int(summary.get("patches_gated_out") or 0)
    return summary["model_name"], (int(summary["patches_planned"]), n, held, int(n > 0))


def head_counts(prediction: dict) -> tuple[str, tuple[int, int, int, int]]:
    """A slide head's prediction, counted for its edge."""
    return prediction["head_name"], (0, 1, 0, 0)


class StageCounts(beam.PTransform):
    """(slide summaries[, slide predictions]) -> ``(stage, counts)`` pairs for the run record's
    composition edges (``io.runs.composition_edges`` sums and reads them)."""

    def expand(self, inputs: tuple[beam.PCollection, ...]) -> beam.PCollection:
        counted = [inputs[0] | "ModelCounts" >> beam.Map(model_counts)]
        if len(inputs) > 1:
            counted.append(inputs[1] | "HeadCounts" >> beam.Map(head_counts))
        return counted | "AllCounts" >> beam.Flatten()
