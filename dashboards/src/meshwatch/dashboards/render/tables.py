"""Table and logs panels drawn as text: rows cut to the panel, columns sized to what they hold.

A table takes whichever frame its datasource gives (Prometheus' table format, Elasticsearch
documents, Jaeger traces), applies the panel's ``organize`` transformation, and draws as many
rows as the panel's height holds, with a footer counting the rest. Columns a reader looks for
first (time, service, level, message, trace id) come first; the others follow while they fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ..queries import QueryResult
from .canvas import BORDER, MUTED, TEXT, Box, Canvas, fit
from .charts import Context
from .frames import (
    Table,
    _es_time,
    apply_organize,
    jaeger_traces_table,
    log_lines,
    prometheus_table,
    raw_documents_table,
)
from .units import format_value

__all__ = ["draw_logs", "draw_table", "panel_table"]

FONT = 6.5
ROW = 0.17  # inches per row
#: Columns shown first when a table has more than fit, in this order.
FIRST = ("@timestamp", "Time", "service.name", "log.level", "message", "trace.id", "Trace ID", "Trace name")
#: Columns never worth their width in a picture (ids of processes and instances, internal numbers).
SKIP = (
    "service.node.name",
    "event.severity",
    "ecs.version",
    "scope.name",
    "host.name",
    "host.hostname",
    "span.id",
    "service.environment",
)
#: Columns that take the width a table has to spare (else its first column does).
PROSE = ("message", "Trace name")
LEVEL_COLORS = {"error": "#E02F44", "fatal": "#8E1A2B", "warn": "#FF9830", "warning": "#FF9830", "info": "#56A64B"}


def panel_table(panel: Mapping[str, Any], results: Sequence[QueryResult]) -> Table:
    """The one table a table panel shows, from whichever datasource its targets use."""
    usable = [r for r in results if r.error is None and r.data is not None]
    if not usable:
        return Table([], [])
    first = usable[0]
    if first.query.datasource == "prometheus":
        table = prometheus_table(usable)
        values = [i for i, c in enumerate(table.columns) if c.startswith("Value")]
        if len(values) == 1:  # a "top N" table: largest first
            i = values[0]
            table.rows.sort(
                key=lambda row: -row[i] if isinstance(row[i], float) and math.isfinite(row[i]) else math.inf
            )
    elif first.query.datasource == "elasticsearch":
        table = raw_documents_table(first)
    elif first.query.datasource == "jaeger":
        table = jaeger_traces_table(first)
    else:
        return Table([], [])
    return apply_organize(table, panel.get("transformations"))


def _cell(column: str, value: Any, unit: str | None) -> str:
    if value is None or value == "":
        return ""
    if column in ("@timestamp", "Time"):
        seconds = _es_time(value) if isinstance(value, str) else float(value)
        return datetime.fromtimestamp(seconds, UTC).strftime("%H:%M:%S")
    if column == "Start time":
        return datetime.fromtimestamp(float(value), UTC).strftime("%H:%M:%S")
    if column == "Duration":
        return format_value(float(value), "s")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format_value(value, unit if column.startswith("Value") else None)
    return " ".join(str(value).split())  # a traceback's lines become one line


def _columns(canvas: Canvas, table: Table, cells: list[list[str]], width: float) -> list[tuple[int, float]]:
    """(column index, width in inches) of the columns drawn: the ones a reader looks for first
    (time, service, level, message, trace id), the widest cut until they fit; then the others,
    only while all fit at their natural width."""
    pad = 0.12
    order = [table.columns.index(c) for c in FIRST if c in table.columns]
    order += [i for i, c in enumerate(table.columns) if i not in order and c not in SKIP]
    natural = {}
    for i in order:
        texts = [table.columns[i], *(row[i] for row in cells)]
        natural[i] = min(max(canvas.text_width(t, FONT, bold=n == 0) for n, t in enumerate(texts)) + pad, 6.0)
    first = [i for i in order if table.columns[i] in FIRST]
    chosen = [i for n, i in enumerate(first) if sum(min(natural[j], 1.0) for j in first[: n + 1]) <= width]
    for i in order:  # the others only while every column keeps its natural width
        if i not in chosen and sum(natural[j] for j in [*chosen, i]) <= width:
            chosen.append(i)
    widths = {i: natural[i] for i in chosen}
    while sum(widths.values()) > width:
        widest = max(widths, key=lambda j: widths[j])
        if widths[widest] <= 0.6:
            break
        widths[widest] -= min(0.1, sum(widths.values()) - width)
    spare = width - sum(widths.values())
    if spare > 0 and widths:  # what is left goes to the text a reader reads: the message, the trace name
        prose = [i for i in widths if table.columns[i] in PROSE] or [next(iter(widths))]
        widths[prose[0]] += spare
    return [(i, widths[i]) for i in chosen]


def draw_table(canvas: Canvas, box: Box, panel: Mapping[str, Any], results: Sequence[QueryResult], ctx: Context) -> int:
    """A header and as many rows as fit; numbers in the panel's unit, times as HH:MM:SS (UTC)."""
    from matplotlib.patches import Rectangle

    table = panel_table(panel, results)
    if not table.rows:
        return 0
    unit = ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit")
    capacity = max(1, int((box.h - ROW * 1.2) / ROW))
    rows = table.rows if len(table.rows) <= capacity else table.rows[: capacity - 1]
    cells = [[_cell(table.columns[i], value, unit) for i, value in enumerate(row)] for row in rows]
    columns = _columns(canvas, table, cells, box.w - 0.1)
    ax = canvas.area(box, f"panel-{panel.get('id')}-table")
    ax.add_patch(Rectangle((0, 0), box.w, ROW, facecolor="#F4F5F5", edgecolor="none"))
    x = 0.05
    for i, width in columns:
        header = canvas.fit(table.columns[i], width - 0.1, FONT, bold=True)
        ax.text(x, ROW / 2, header, fontsize=FONT, weight="bold", va="center", color=TEXT)
        x += width
    for r, row in enumerate(rows):
        y = ROW * (r + 1.5)
        if r % 2:
            ax.add_patch(Rectangle((0, y - ROW / 2), box.w, ROW, facecolor="#FAFAFB", edgecolor="none"))
        x = 0.05
        for i, width in columns:
            column = table.columns[i]
            text = canvas.fit(cells[r][i], width - 0.1, FONT)
            color = LEVEL_COLORS.get(str(row[i]).lower(), TEXT) if column == "log.level" else TEXT
            link = column in ("trace.id", "Trace ID", "traceID")
            ax.text(x, y, text, fontsize=FONT, va="center", color="#1F62E0" if link else color)
            x += width
    ax.plot([0, box.w], [ROW, ROW], color=BORDER, lw=0.6)
    if len(rows) < len(table.rows):
        more = len(table.rows) - len(rows)
        ax.text(0.05, ROW * (len(rows) + 1.5), f"… {more} more rows", fontsize=FONT, va="center", color=MUTED)
    return len(table.rows)


def draw_logs(canvas: Canvas, box: Box, panel: Mapping[str, Any], results: Sequence[QueryResult], ctx: Context) -> int:
    """Log lines, newest first: time, a level mark in its colour, service, message; one per row."""
    lines = [line for r in results if r.error is None and r.data is not None for line in log_lines(r)]
    if not lines:
        return 0
    ax = canvas.area(box, f"panel-{panel.get('id')}-logs")
    row = ROW * 0.95
    capacity = max(1, int((box.h - 0.05) / row))
    cw = canvas.text_width("M" * 20, FONT, mono=True) / 20
    chars = int((box.w - 0.2) / cw)
    service_w = max(len(line.service) for line in lines[:capacity]) + 1
    for n, line in enumerate(lines[:capacity]):
        y = row * (n + 0.6)
        color = LEVEL_COLORS.get(line.level.lower(), MUTED)
        ax.plot([0.04, 0.04], [y - row * 0.4, y + row * 0.4], color=color, lw=2.2, solid_capstyle="butt")
        stamp = datetime.fromtimestamp(line.time, UTC).strftime("%H:%M:%S.%f")[:-3]
        head = f"{stamp} {line.level.upper():<5} {line.service:<{service_w}} "
        text = head + fit(line.message, max(10, chars - len(head)))
        ax.text(0.12, y, text, fontsize=FONT, family="monospace", va="center", color=TEXT)
    return len(lines)
