"""The composition of a run's models as a small inline SVG graph for its report: gate ->
detail -> head, left to right, with the counts at each edge (``runs.composition_edges``).

Static SVG, no script; every name is escaped."""

from __future__ import annotations

from collections.abc import Sequence

from transforms.io.html_text import e

_NODE_W, _NODE_H, _COL, _ROW = 120, 34, 480, 64


def _depths(edges: Sequence[dict]) -> dict[str, int]:
    """Each node's column: the longest path from a source (the graph has no cycles: gates are
    checked at launch and a head feeds nothing)."""
    nodes = list(dict.fromkeys(n for edge in edges for n in (edge["source"], edge["target"])))
    depth = dict.fromkeys(nodes, 0)
    for _ in nodes:
        for edge in edges:
            depth[edge["target"]] = max(depth[edge["target"]], depth[edge["source"]] + 1)
    return depth


def edge_label(edge: dict) -> str:
    """What crossed an edge, said."""
    if edge["kind"] == "gate":
        return (
            f"passed {edge.get('passed') or 0:,} of {edge.get('inputs') or 0:,} patches "
            f"(held back {edge.get('held_back') or 0:,})"
        )
    return f"{edge.get('inputs') or 0:,} slides -> {edge.get('results') or 0:,} predictions"


def composition_svg(edges: Sequence[dict]) -> str:
    """The graph as an ``<svg>`` element (empty text without edges)."""
    if not edges:
        return ""
    depth = _depths(edges)
    rows: dict[int, int] = {}
    where = {}
    for node, d in depth.items():
        where[node] = (20 + d * _COL, 20 + rows.get(d, 0) * _ROW)
        rows[d] = rows.get(d, 0) + 1
    width = 40 + max(depth.values()) * _COL + _NODE_W
    height = 40 + max(rows.values()) * _ROW
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'role="img" aria-label="model composition" font-size="12" font-family="sans-serif">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>'
        "</defs>",
    ]
    for edge in edges:
        (x0, y0), (x1, y1) = where[edge["source"]], where[edge["target"]]
        ax, ay, bx, by = x0 + _NODE_W, y0 + _NODE_H / 2, x1, y1 + _NODE_H / 2
        colour = "#2ca02c" if edge["kind"] == "gate" else "#1f77b4"
        parts.append(
            f'<line x1="{ax}" y1="{ay}" x2="{bx}" y2="{by}" stroke="{colour}" '
            'stroke-width="2" marker-end="url(#arrow)"/>'
        )
        label = f"{edge['kind']}: {edge_label(edge)}"
        parts.append(
            f'<text x="{(ax + bx) / 2}" y="{(ay + by) / 2 - 6}" text-anchor="middle" '
            f'fill="#333" font-size="10">{e(label)}</text>'
        )
        if edge.get("rule"):
            parts.append(
                f'<text x="{(ax + bx) / 2}" y="{(ay + by) / 2 + 14}" text-anchor="middle" '
                f'fill="#777" font-size="10">{e(edge["rule"])}</text>'
            )
    for node, (x, y) in where.items():
        parts.append(
            f'<rect x="{x}" y="{y}" width="{_NODE_W}" height="{_NODE_H}" rx="6" fill="#f4f4f4" '
            f'stroke="#888"/><text x="{x + _NODE_W / 2}" y="{y + 21}" text-anchor="middle">'
            f"{e(node)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
