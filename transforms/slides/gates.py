"""Gates: a model runs only on the patches whose area another model (its gate) passed.

    --gate detail='qc:tissue>=0.5 and qc:blur<0.2'

The gate is an ordinary model of the job (usually at its own coarser ``--model_mpp``). Its rows
come first; each of its patches passes or not by the rule (``GateRule.passes``: conditions on its
class values, ``and`` binding tighter than ``or``). A detail patch is then kept when the gate's
passing patches cover it (``GateCover``): ``centre``, a passing gate patch holds its centre;
``any``, a passing gate patch overlaps it. A gate patch the gate has no row for (not planned,
refused or failed) does not pass.

Gating happens on the detail model's work units, before any of its pixels are read: a held-back
patch costs neither a decode nor an inference. Each one is counted per slide x model
(``patches_gated_out`` in ``slide_summaries``), so patches planned = rows + gated out + dead
letters still holds. The gate's verdict on each of its patches is a ``gate_verdicts`` row.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from transforms.core import progress
from transforms.core.errors import DEAD_LETTER, ConfigError, dead_letter
from transforms.io.schemas import RUN_COLUMNS, SLIDE_CLUSTER, SLIDE_KEY, Column, Table, file_name

COVERS = ("centre", "any")
"""How gate patches cover a detail patch (``--gate_cover``)."""

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_CONDITION = re.compile(
    r"^\s*(?P<gate>[A-Za-z_][A-Za-z0-9_-]*)\s*:\s*(?P<cls>[^<>=\s]+)\s*"
    r"(?P<op>>=|<=|>|<)\s*(?P<value>[-+0-9.eE]+)\s*$"
)

GATE_VERDICTS = Table(
    "gate_verdicts",
    (
        Column("slide_id", "STRING", "REQUIRED"),
        Column("model_name", "STRING", "REQUIRED", description="the gated model"),
        Column("model_version", "STRING", "REQUIRED"),
        Column("gate_name", "STRING", "REQUIRED", description="the gate model"),
        Column("gate_version", "STRING", "REQUIRED"),
        Column("rule", "STRING", "REQUIRED", description="the --gate rule, as given"),
        Column("x_px", "INT64", "REQUIRED", description="the gate patch's level-0 left edge"),
        Column("y_px", "INT64", "REQUIRED"),
        Column("size_px", "INT64", "REQUIRED"),
        Column("passed", "BOOL", "REQUIRED"),
        *RUN_COLUMNS,
    ),
    SLIDE_KEY,
    SLIDE_CLUSTER,
)


@dataclass(frozen=True)
class Condition:
    """``CLASS OP THRESHOLD`` on one class value of a gate row (a probability, or a class share
    of a segmentation's patch)."""

    class_index: int
    op: str
    threshold: float

    def holds(self, values: Sequence[float]) -> bool:
        return self.class_index < len(values) and bool(
            _OPS[self.op](float(values[self.class_index]), self.threshold)
        )


@dataclass(frozen=True)
class GateRule:
    """Model ``model`` runs where gate ``gate``'s patches pass ``any_of`` (conditions: an OR of
    ANDs), covered by the ``cover`` rule."""

    model: str
    gate: str
    any_of: tuple[tuple[Condition, ...], ...]
    text: str
    cover: str = "centre"

    def passes(self, values: Sequence[float]) -> bool:
        return any(all(c.holds(values) for c in conj) for conj in self.any_of)


def _class_index(text: str, gate: Any, flag: str) -> int:
    names = list(gate.class_names)
    if text in names:
        return names.index(text)
    if text.isdigit():
        return int(text)
    said = f"its classes are {', '.join(names)}" if names else "give it --class_names"
    raise ConfigError(f"{flag}: gate {gate.name!r} has no class {text!r} ({said}, or an index)")


def parse_gate(model: str, text: str, specs: dict[str, Any], cover: str) -> GateRule:
    """``--gate MODEL=TEXT`` as a rule; ``ConfigError`` naming the flag."""
    flag = f"--gate {model}={text}"
    if model not in specs:
        raise ConfigError(f"--gate names {model}, which no --model defines")
    if cover not in COVERS:
        raise ConfigError(f"--gate_cover must be one of {', '.join(COVERS)}, got {cover!r}")
    any_of, gates = [], set()
    for part in re.split(r"\s+or\s+|\|", text):
        conj = []
        for atom in re.split(r"\s+and\s+|&", part):
            m = _CONDITION.match(atom)
            if m is None:
                raise ConfigError(
                    f"{flag}: cannot read {atom.strip()!r}; expected GATE:CLASS>=THRESHOLD "
                    "(>=, >, <= or <), joined by and / or"
                )
            gate = specs.get(m["gate"])
            if gate is None:
                raise ConfigError(f"{flag}: {m['gate']!r} is not a --model of this job")
            if not gate.kind.has_classes:
                raise ConfigError(
                    f"{flag}: gate {gate.name!r} is a {gate.output_kind} model; a gate must give "
                    "class values (classification or segmentation)"
                )
            gates.add(gate.name)
            conj.append(Condition(_class_index(m["cls"], gate, flag), m["op"], float(m["value"])))
        any_of.append(tuple(conj))
    if len(gates) != 1:
        raise ConfigError(
            f"{flag}: one rule names one gate model (got {', '.join(sorted(gates))}); gate the "
            "gate itself for a chain"
        )
    (gate_name,) = gates
    if gate_name == model:
        raise ConfigError(f"{flag}: a model cannot gate itself")
    return GateRule(model, gate_name, tuple(any_of), text.strip(), cover)


def gate_order(names: Sequence[str], rules: dict[str, GateRule]) -> list[str]:
    """The models in an order where every gate comes before the models it gates; ``ConfigError``
    naming the cycle if there is one."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: placed

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise ConfigError(f"--gate rules form a cycle: {' -> '.join(reversed(cycle))}")
        state[name] = 1
        if name in rules:
            visit(rules[name].gate, [*path, name])
        state[name] = 2
        order.append(name)

    for name in names:
        visit(name, [])
    return order


@dataclass(frozen=True)
class _GateBox:
    x: int
    y: int
    size: int
    passed: bool


class _BoxIndex:
    """The gate's passing boxes of one slide, bucketed for lookups by point or by box."""

    def __init__(self, boxes: Iterable[_GateBox]) -> None:
        self._boxes = [b for b in boxes if b.passed]
        self._cell = max((b.size for b in self._boxes), default=1)
        self._buckets: dict[tuple[int, int], list[_GateBox]] = {}
        for b in self._boxes:
            for cy in range(b.y // self._cell, (b.y + b.size - 1) // self._cell + 1):
                for cx in range(b.x // self._cell, (b.x + b.size - 1) // self._cell + 1):
                    self._buckets.setdefault((cx, cy), []).append(b)

    def _near(self, x0: float, y0: float, x1: float, y1: float) -> Iterator[_GateBox]:
        c = self._cell
        for cy in range(int(y0 // c), int(y1 // c) + 1):
            for cx in range(int(x0 // c), int(x1 // c) + 1):
                yield from self._buckets.get((cx, cy), ())

    def covers(self, x: int, y: int, size: int, cover: str) -> bool:
        if cover == "centre":
            cx, cy = x + size / 2, y + size / 2
            return any(
                b.x <= cx < b.x + b.size and b.y <= cy < b.y + b.size
                for b in self._near(cx, cy, cx, cy)
            )
        return any(
            b.x < x + size and x < b.x + b.size and b.y < y + size and y < b.y + b.size
            for b in self._near(x, y, x + size - 1, y + size - 1)
        )


def kept_unit(unit: Any, boxes: list[Any]) -> Any:
    """``unit`` with only ``boxes``, its read region shrunk to their bounding box (at its
    level), so a gated unit decodes only the tiles its kept patches need."""
    from transforms.slides.geometry import box_at_level

    rx, ry, rw, rh = unit.region_lvl
    lvl = [box_at_level(b, unit.downsample) for b in boxes]
    x0 = max(rx, min(x for x, _, _ in lvl))
    y0 = max(ry, min(y for _, y, _ in lvl))
    x1 = min(rx + rw, max(x + s for x, _, s in lvl))
    y1 = min(ry + rh, max(y + s for _, y, s in lvl))
    return dataclasses.replace(unit, patches=boxes, region_lvl=(x0, y0, x1 - x0, y1 - y0))


class _ApplyGate(beam.DoFn):
    """(slide, {units, gate rows}) -> kept units; ``gated`` counts and ``verdicts`` rows."""

    def __init__(self, rule: GateRule, spec: Any, gate: Any, run_id: str) -> None:
        self._rule = rule
        self._spec = spec
        self._gate_kind = gate.kind
        self._gate_version = gate.version
        self._run_id = run_id

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        slide_id, groups = element
        rule, kind = self._rule, self._gate_kind
        boxes = []
        for row in groups["gate"]:
            passed = rule.passes(kind.slide_values(row))
            boxes.append(_GateBox(int(row["x_px"]), int(row["y_px"]), int(row["size_px"]), passed))
            yield beam.pvalue.TaggedOutput(
                "verdicts",
                {
                    "slide_id": slide_id,
                    "model_name": self._spec.name,
                    "model_version": self._spec.version,
                    "gate_name": rule.gate,
                    "gate_version": self._gate_version,
                    "rule": rule.text,
                    "x_px": int(row["x_px"]),
                    "y_px": int(row["y_px"]),
                    "size_px": int(row["size_px"]),
                    "passed": passed,
                    "run_id": self._run_id,
                },
            )
        index = _BoxIndex(boxes)
        held = 0
        for unit in groups["units"]:
            kept = [b for b in unit.patches if index.covers(b.x_px, b.y_px, b.size_px, rule.cover)]
            held += len(unit.patches) - len(kept)
            if kept:
                yield kept_unit(unit, kept)
        progress.count("patches_gated_out", held)
        yield beam.pvalue.TaggedOutput(
            "gated", {"slide_id": slide_id, "model_name": self._spec.name, "gated_out": held}
        )


def _by_slide(item: Any) -> tuple[str, Any]:
    return (item["slide_id"] if isinstance(item, dict) else item.slide_id), item


class GateUnits(beam.PTransform):
    """(work units of the gated model's geometry, the gate's rows) -> the units cut down to the
    patches the gate passes.

    Out: a dict with ``units``, ``gated`` (one ``{slide_id, model_name, gated_out}`` per slide
    with units) and ``verdicts`` (``gate_verdicts`` rows).
    """

    def __init__(self, rule: GateRule, spec: Any, gate: Any, run_id: str) -> None:
        super().__init__()
        self._fn = _ApplyGate(rule, spec, gate, run_id)

    def expand(self, inputs: dict[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        out = (
            {
                "units": inputs["units"] | "UnitsBySlide" >> beam.Map(_by_slide),
                "gate": inputs["gate"] | "GateRowsBySlide" >> beam.Map(_by_slide),
            }
            | "JoinGate" >> beam.CoGroupByKey()
            | "ApplyGate" >> beam.ParDo(self._fn).with_outputs("gated", "verdicts", main="units")
        )
        return {"units": out.units, "gated": out.gated, "verdicts": out.verdicts}


_VERDICT_CLASSES = {
    True: ("Gate passed", [44, 160, 44]),
    False: ("Gate held back", [127, 127, 127]),
}


def verdict_features(verdicts: Iterable[dict]) -> Iterator[dict[str, Any]]:
    """A gate's verdicts merged into QuPath annotations: the connected area it passed, and the
    area it held back, each with its gate-patch count and area."""
    import shapely
    from shapely.geometry import box, mapping

    boxes: dict[bool, list[Any]] = {True: [], False: []}
    for v in verdicts:
        x, y, s = int(v["x_px"]), int(v["y_px"]), int(v["size_px"])
        boxes[bool(v["passed"])].append(box(x, y, x + s, y + s))
    for passed in (True, False):
        if not boxes[passed]:
            continue
        name, colour = _VERDICT_CLASSES[passed]
        merged = shapely.unary_union(boxes[passed])
        if not passed:  # overlapping gate patches: a box that passed wins the shared part
            merged = merged.difference(shapely.unary_union(boxes[True]))
        for polygon in getattr(merged, "geoms", [merged]):
            if polygon.is_empty or polygon.area == 0:
                continue
            count = sum(1 for b in boxes[passed] if polygon.contains(b.centroid))
            yield {
                "type": "Feature",
                "geometry": mapping(polygon),
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": colour},
                    "measurements": {"gate patches": count, "Area px^2": float(polygon.area)},
                },
            }


def verdicts_uri(folder: str, slide_id: str, model_name: str) -> str:
    return f"{folder.rstrip('/')}/{file_name(slide_id, model_name, '.gate.geojson')}"


class _WriteVerdicts(beam.DoFn):
    STAGE = "ExportGateVerdicts"

    def __init__(self, folder: str) -> None:
        self._folder = folder

    def process(self, element: tuple[tuple[str, str], Iterable[dict]]) -> Iterator[Any]:
        import json

        from transforms.core.remote_io import open_uri

        (slide_id, model_name), verdicts = element
        uri = verdicts_uri(self._folder, slide_id, model_name)
        try:
            features = list(verdict_features(verdicts))
            with open_uri(uri, "w", auto_mkdir=True) as f:
                json.dump({"type": "FeatureCollection", "features": features}, f)
            yield uri
        except Exception as exc:  # noqa: BLE001 - the tables are written already
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER,
                dead_letter(self.STAGE, f"{slide_id}/{model_name}", exc, {"slide_id": slide_id}),
            )


class ExportGateVerdicts(beam.PTransform):
    """``gate_verdicts`` rows -> one QuPath GeoJSON per slide x gated model in ``folder``
    (``<slide>.<model>.gate.geojson``). Out: ``files`` and ``DEAD_LETTER`` rows."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self._folder = folder

    def expand(self, verdicts: beam.PCollection) -> dict[str, beam.PCollection]:
        written = (
            verdicts
            | "BySlideAndModel" >> beam.Map(lambda v: ((v["slide_id"], v["model_name"]), v))
            | "Group" >> beam.GroupByKey()
            | "Write"
            >> beam.ParDo(_WriteVerdicts(self._folder)).with_outputs(DEAD_LETTER, main="files")
        )
        return {"files": written.files, DEAD_LETTER: written[DEAD_LETTER]}
