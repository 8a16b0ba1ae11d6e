"""Node graph panels: services as circles, calls as arrows, each with its number.

Laid out in layers by call depth (callers left of callees, a node one layer right of its
deepest caller), which is how a request flows through a mesh and needs no graph library.
Databases and caches appear under the name the spans give them (a file path, an address);
paths are shortened to their last part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..queries import QueryResult
from .canvas import MUTED, PALETTE, TEXT, Box, Canvas
from .charts import Context
from .frames import Graph, graph_from_tables, jaeger_dependency_graph
from .units import format_value

__all__ = ["draw_nodegraph", "layered_layout", "panel_graph"]


def panel_graph(panel: Mapping[str, Any], results: Sequence[QueryResult]) -> Graph:
    """The graph a node graph panel shows: Prometheus node and edge tables (after the panel's
    transformations), or Jaeger's dependency graph."""
    usable = [r for r in results if r.error is None and r.data is not None]
    if not usable:
        return Graph({}, [])
    if usable[0].query.datasource == "jaeger":
        return jaeger_dependency_graph(usable[0])
    from .frames import apply_organize, prometheus_table

    tables = [apply_organize(prometheus_table([r]), panel.get("transformations")) for r in usable]
    # A single-target table names its value "Value": the node graph's main statistic.
    for table in tables:
        table.columns = ["mainstat" if c == "Value" else c for c in table.columns]
    return graph_from_tables(tables)


def layered_layout(graph: Graph) -> dict[str, tuple[int, int]]:
    """(layer, position in layer) per node: a node sits one layer right of its deepest caller
    (cycles cannot push a node further than the number of nodes); within a layer nodes follow
    the mean position of their callers, so arrows cross little."""
    depth = dict.fromkeys(graph.nodes, 0)
    limit = max(1, len(graph.nodes) - 1)
    for _ in range(len(graph.nodes)):
        changed = False
        for source, target, _stat in graph.edges:
            if source != target and depth[target] < min(depth[source] + 1, limit):
                depth[target] = min(depth[source] + 1, limit)
                changed = True
        if not changed:
            break
    layers: dict[int, list[str]] = {}
    for name in sorted(graph.nodes):
        layers.setdefault(depth[name], []).append(name)
    position: dict[str, tuple[int, int]] = {}
    for layer in sorted(layers):

        def caller_mean(name: str) -> float:
            parents = [position[s][1] for s, t, _ in graph.edges if t == name and s in position]
            return sum(parents) / len(parents) if parents else 0.0

        ordered = sorted(layers[layer], key=lambda n: (caller_mean(n), n))
        position.update({name: (layer, i) for i, name in enumerate(ordered)})
    return position


def _short(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1] or name


def draw_nodegraph(
    canvas: Canvas, box: Box, panel: Mapping[str, Any], results: Sequence[QueryResult], ctx: Context
) -> int:
    """Circles with each node's main statistic inside and its name below; arrows from caller to
    callee labelled with the edge's statistic (requests/s, or calls for Jaeger's graph)."""
    from matplotlib.patches import Circle

    graph = panel_graph(panel, results)
    if not graph.nodes:
        return 0
    options = panel.get("options") or {}
    node_unit = (options.get("nodes") or {}).get("mainStatUnit")
    edge_unit = (options.get("edges") or {}).get("mainStatUnit")
    jaeger = any(r.query.datasource == "jaeger" for r in results)
    position = layered_layout(graph)
    layers = max(p[0] for p in position.values()) + 1
    tallest = max(sum(1 for p in position.values() if p[0] == layer) for layer in range(layers))
    margin_x, margin_y = 0.6, 0.3
    dx = (box.w - 2 * margin_x) / max(1, layers - 1)
    dy = (box.h - 2 * margin_y - 0.2) / max(1, tallest)
    radius = max(0.12, min(0.3, dy * 0.3, dx * 0.22))
    ax = canvas.area(box, f"panel-{panel.get('id')}-graph")
    xy: dict[str, tuple[float, float]] = {}
    for name, (layer, index) in position.items():
        count = sum(1 for p in position.values() if p[0] == layer)
        x = margin_x + layer * dx if layers > 1 else box.w / 2
        y = margin_y + (box.h - 2 * margin_y - 0.2) * (index + 0.5) / count
        xy[name] = (x, y)
    for source, target, stat in graph.edges:
        if source == target:
            continue
        (x1, y1), (x2, y2) = xy[source], xy[target]
        ax.annotate(
            "",
            xy=(x2, y2),
            xytext=(x1, y1),
            arrowprops={
                "arrowstyle": "-|>",
                "color": "#8E9196",
                "lw": 0.9,
                "shrinkA": radius * 72 + 1,
                "shrinkB": radius * 72 + 2,
                "mutation_scale": 8,
            },
        )
        if stat is not None:
            shown = float(f"{stat:.2g}") if abs(stat) < 1 else stat
            label = f"{stat:.0f} calls" if jaeger else format_value(shown, edge_unit)
            mx, my = x1 + 0.55 * (x2 - x1), y1 + 0.55 * (y2 - y1)
            ax.text(
                mx,
                my,
                label,
                fontsize=5.8,
                ha="center",
                va="center",
                color=TEXT,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.9},
                zorder=4,
            )
    for i, (name, stat) in enumerate(sorted(graph.nodes.items())):
        x, y = xy[name]
        color = PALETTE[i % len(PALETTE)]
        ax.add_patch(Circle((x, y), radius, facecolor="white", edgecolor=color, lw=2.2, zorder=5))
        if stat is not None:
            shown = float(f"{stat:.2g}") if abs(stat) < 1 else stat  # it has to fit in the circle
            inner = format_value(shown, node_unit).replace(" req/s", "\nreq/s")
            ax.text(x, y, inner, fontsize=5.6, ha="center", va="center", color=TEXT, zorder=6)
        label = canvas.fit(_short(name), min(dx if layers > 1 else box.w, 1.8) - 0.1, 6.5)
        ax.text(x, y + radius + 0.04, label, fontsize=6.5, ha="center", va="top", color=TEXT, zorder=6)
    if jaeger:
        ax.text(
            box.w - 0.05, box.h - 0.05, "calls over the time range", fontsize=6, ha="right", va="bottom", color=MUTED
        )
    return len(graph.nodes)
