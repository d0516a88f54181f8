"""The import layers hold: core -> io -> models -> slides | text | stream -> pipelines. Nothing
imports upward, slides and text do not import each other, and no two modules import each other
(lazy imports inside functions count too). Run ``python -m tests.test_layers`` to print the
scan."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = {"core": 0, "io": 1, "models": 2, "slides": 3, "text": 3, "stream": 3}


def _room(module: str) -> tuple[int, str] | None:
    parts = module.split(".")
    if parts[0] == "pipelines":
        return 4, "pipelines"
    if parts[0] == "transforms" and len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS[parts[1]], parts[1]
    return None


def imports() -> dict[str, set[str]]:
    """Each product module -> the product modules it imports (at the top or in a function)."""
    out: dict[str, set[str]] = {}
    for path in sorted([*REPO.glob("transforms/**/*.py"), *REPO.glob("pipelines/*.py")]):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            targets |= {n for n in names if _room(n) is not None and _is_module(n)}
        out[module] = targets - {module}
    return out


def _is_module(name: str) -> bool:
    path = REPO / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    bad = []
    for module, targets in graph.items():
        level, room = _room(module) or (0, "")
        for target in sorted(targets):
            t_level, t_room = _room(target) or (0, "")
            if t_level > level or (t_level == level == 3 and t_room != room):
                bad.append((module, target))
    return bad


def mutual(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted(
        (a, b) for a, targets in graph.items() for b in targets if a < b and a in graph.get(b, ())
    )


def test_no_module_imports_a_layer_above_its_own():
    assert upward(imports()) == []


def test_no_two_modules_import_each_other():
    assert mutual(imports()) == []


if __name__ == "__main__":
    graph = imports()
    for a, b in upward(graph):
        print(f"upward: {a} -> {b}")
    for a, b in mutual(graph):
        print(f"mutual: {a} <-> {b}")
