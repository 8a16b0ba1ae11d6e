"""A whole dashboard as one picture: every panel at its grid position, drawn from its data.

Grafana's grid is 24 columns wide and counts height in rows of 30 px; here a column is
0.66 in and a row 0.3 in, about the proportions of Grafana on a 1920 px screen. Each panel is a
white card with its title; its content is drawn by the function for its type. A panel whose
queries returned nothing says "No data" (and which query failed, if one did), as Grafana does,
and is listed in the :class:`Rendered` summary so a caller can tell a picture with empty panels.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..check import all_panels
from ..queries import QueryResult, TimeRange
from .canvas import BORDER, MUTED, PANEL, TEXT, Box, Canvas
from .charts import Context, draw_bargauge, draw_gauge, draw_heatmap, draw_stat, draw_timeseries
from .graph import draw_nodegraph
from .tables import draw_logs, draw_table

__all__ = ["DRAWERS", "Rendered", "dashboard_figure", "render_dashboard", "save_png"]

COLUMN = 0.66  # inches per grid column
ROW = 0.3  # inches per grid row
MARGIN = 0.15
HEADER = 0.55
GAP = 0.08
TITLE = 0.26  # the panel title's strip

Drawer = Callable[[Canvas, Box, Mapping[str, Any], Sequence[QueryResult], Context], int]

DRAWERS: dict[str, Drawer] = {
    "timeseries": draw_timeseries,
    "barchart": draw_timeseries,
    "stat": draw_stat,
    "gauge": draw_gauge,
    "bargauge": draw_bargauge,
    "heatmap": draw_heatmap,
    "table": draw_table,
    "logs": draw_logs,
    "nodeGraph": draw_nodegraph,
}


@dataclass
class Rendered:
    """What a picture shows: per panel title, how many things were drawn (0: "No data"), and
    the errors of the queries that failed."""

    drawn: dict[str, int] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)

    @property
    def empty(self) -> list[str]:
        return [title for title, n in self.drawn.items() if n == 0]


def _describe(variables: Mapping[str, Any], time_range: TimeRange) -> str:
    end = datetime.fromtimestamp(time_range.end, UTC)
    start = datetime.fromtimestamp(time_range.start, UTC)
    span = f"{start:%Y-%m-%d %H:%M} – {end:%H:%M} UTC"
    values = [f"{name} = {', '.join(v) if isinstance(v, list) else v}" for name, v in variables.items()]
    return "   ·   ".join([*values, span])


def dashboard_figure(
    model: Mapping[str, Any],
    results: Iterable[QueryResult],
    *,
    time_range: TimeRange,
    variables: Mapping[str, Any] | None = None,
    dpi: float = 100,
) -> tuple[Any, Rendered]:
    """The matplotlib figure of a dashboard drawn from ``results`` (the query runner's, for this
    dashboard), and what it shows. Each panel's axes carry the gid ``panel-<id>-…``."""
    panels = list(all_panels(model))
    by_panel: dict[int, list[QueryResult]] = {}
    for result in results:
        by_panel.setdefault(result.query.panel_id, []).append(result)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    canvas = Canvas(MARGIN * 2 + 24 * COLUMN, HEADER + rows * ROW + MARGIN, dpi=dpi)
    fig = canvas.figure
    # "\$": a bare $ would start matplotlib's mathtext
    fig.text(
        MARGIN / canvas.width,
        1 - 0.3 / canvas.height,
        model.get("title", ""),
        fontsize=13,
        weight="bold",
        color=TEXT,
        va="center",
    )
    described = _describe(variables or {}, time_range).replace("$", "\\$")
    fig.text(
        1 - MARGIN / canvas.width, 1 - 0.3 / canvas.height, described, fontsize=8, color=MUTED, ha="right", va="center"
    )
    context = Context(time_range)
    rendered = Rendered()
    for panel in panels:
        g = panel["gridPos"]
        box = Box(
            MARGIN + g["x"] * COLUMN + GAP / 2,
            HEADER + g["y"] * ROW + GAP / 2,
            g["w"] * COLUMN - GAP,
            g["h"] * ROW - GAP,
        )
        title = panel.get("title", "")
        if panel.get("type") == "row":
            area = canvas.area(box, f"panel-{panel.get('id')}-row")
            area.text(0.02, box.h / 2, title, fontsize=9.5, weight="bold", color=TEXT, va="center")
            continue
        _card(canvas, box, panel)
        content = box.inset(left=0.1, top=TITLE + 0.04, right=0.08, bottom=0.06)
        results_here = by_panel.get(panel.get("id", 0), [])
        drawer = DRAWERS.get(panel.get("type", ""))
        drawn = drawer(canvas, content, panel, results_here, context) if drawer else 0
        key = title if title not in rendered.drawn else f"{title} #{panel.get('id')}"
        rendered.drawn[key] = drawn
        errors = [f"{r.query.ref_id}: {r.error}" for r in results_here if r.error]
        if errors:
            rendered.errors[key] = errors
        if not drawn:
            _no_data(canvas, content, panel, errors, drawer is None)
    return fig, rendered


def _card(canvas: Canvas, box: Box, panel: Mapping[str, Any]) -> None:
    from matplotlib.patches import FancyBboxPatch

    area = canvas.area(box, f"panel-{panel.get('id')}-card")
    area.set_zorder(-1)
    area.add_patch(
        FancyBboxPatch(
            (0.01, 0.01),
            box.w - 0.02,
            box.h - 0.02,
            boxstyle="round,pad=0,rounding_size=0.04",
            facecolor=PANEL,
            edgecolor=BORDER,
            lw=0.8,
        )
    )
    title = canvas.fit(panel.get("title", ""), box.w - 0.2, 8.5, bold=True)
    area.text(0.1, TITLE / 2 + 0.04, title, fontsize=8.5, weight="bold", color=TEXT, va="center")


def _no_data(canvas: Canvas, box: Box, panel: Mapping[str, Any], errors: Sequence[str], unknown: bool) -> None:
    area = canvas.area(box, f"panel-{panel.get('id')}-nodata")
    if unknown:
        message = f"({panel.get('type')} panels are not drawn here)"
    elif errors:
        message = canvas.fit("Query failed: " + errors[0], box.w - 0.2, 6.5)
    else:
        message = "No data"
    color = "#E02F44" if errors else MUTED
    area.text(
        box.w / 2,
        box.h / 2,
        message,
        fontsize=9 if not errors else 6.5,
        ha="center",
        va="center",
        color=color,
        wrap=True,
    )


def save_png(fig: Any, path: Path, *, colors: int = 256) -> Path:
    """Write ``fig`` as a palette PNG (``colors`` colours): a third of the size of full colour
    for charts that hold a few dozen colours, and the picture looks the same. Octree keeps a
    colour that covers few pixels (a legend's swatch); median cut merged it into grey."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor=fig.get_facecolor())
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(colors=colors, method=Image.Quantize.FASTOCTREE)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path


def render_dashboard(
    model: Mapping[str, Any],
    results: Iterable[QueryResult],
    path: Path,
    *,
    time_range: TimeRange,
    variables: Mapping[str, Any] | None = None,
    dpi: float = 100,
) -> Rendered:
    """Draw ``model`` with the query runner's ``results`` into the PNG ``path``."""
    fig, rendered = dashboard_figure(model, results, time_range=time_range, variables=variables, dpi=dpi)
    save_png(fig, path)
    return rendered
