"""Time series, stat, gauge, bar gauge and heatmap panels drawn from query results.

Each ``draw_*`` function draws one panel's content inside its :class:`Box` and returns how many
things it drew (lines, values, cells), 0 meaning the panel has no data. Time series keep
Grafana's units and legends; where several targets give the same series different statistics
(p50 / p95 / p99 of each service), colour follows the series and the line style the target, with
one legend entry for each, so twenty lines stay readable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from ..queries import QueryResult, TimeRange
from .canvas import GRAFANA_COLORS, MUTED, PALETTE, TEXT, Box, Canvas, threshold_color
from .frames import _LEGEND, Series, es_series, exemplars, heatmap, legend_name, prometheus_series
from .units import format_value

__all__ = [
    "Context",
    "draw_bargauge",
    "draw_gauge",
    "draw_heatmap",
    "draw_stat",
    "draw_timeseries",
    "override_colors",
    "panel_series",
]

STYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (6, 1.5, 1, 1.5, 1, 1.5)))
TICK_SIZE = 6.5
LEGEND_SIZE = 6.3
LEGEND_LINE = 0.15  # inches per legend row
EXEMPLAR_COLOR = "#B877D9"
MAX_EXEMPLARS = 250
_EPOCH_DAYS = 719163.0  # matplotlib's date number of 1970-01-01


@dataclass(frozen=True)
class Context:
    time_range: TimeRange


def _days(t: float) -> float:
    return t / 86400.0 + _EPOCH_DAYS


def _defaults(panel: Mapping[str, Any]) -> Mapping[str, Any]:
    return (panel.get("fieldConfig") or {}).get("defaults") or {}


def override_colors(panel: Mapping[str, Any]) -> dict[str, str]:
    """Fixed colours the panel's overrides give series by name (``matcher: byName``)."""
    out = {}
    for override in (panel.get("fieldConfig") or {}).get("overrides") or []:
        matcher = override.get("matcher") or {}
        for prop in override.get("properties") or []:
            if matcher.get("id") == "byName" and prop.get("id") == "color":
                color = (prop.get("value") or {}).get("fixedColor")
                if color:
                    out[str(matcher.get("options"))] = GRAFANA_COLORS.get(color, color)
    return out


def panel_series(results: Sequence[QueryResult], ctx: Context) -> list[Series]:
    """Every series the panel's targets returned (Prometheus and Elasticsearch counts)."""
    out: list[Series] = []
    for result in results:
        if result.error or result.data is None:
            continue
        if result.query.datasource == "prometheus":
            found = prometheus_series(result, step=ctx.time_range.query_step)
        elif result.query.datasource == "elasticsearch":
            found = es_series(result)
        else:
            continue
        out += sorted(found, key=lambda s: s.name)
    return out


# --- legends ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    label: str
    color: str
    style: Any = "-"
    kind: str = "line"  # line | bar | marker


def _split_legends(targets: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str], str] | None:
    """When every target's legend has the same ``{{labels}}`` and a word of its own ("p95",
    "5m", "failed"): that word per refId, and the shared part that names the colours."""
    formats = {t.get("refId", ""): t.get("legendFormat") or "" for t in targets}
    if len(formats) < 2:
        return None
    placeholders = {ref: tuple(_LEGEND.findall(f)) for ref, f in formats.items()}
    words = {ref: " ".join(tok for tok in f.split() if "{{" not in tok) for ref, f in formats.items()}
    if len(set(placeholders.values())) != 1 or not all(words.values()) or len(set(words.values())) != len(words):
        return None
    shared = " ".join(tok for tok in next(iter(formats.values())).split() if "{{" in tok)
    return words, shared


@dataclass(frozen=True)
class _Legend:
    entries: list[_Entry]
    columns: int
    rows: int
    column: float  # inches per column

    @property
    def height(self) -> float:
        return self.rows * LEGEND_LINE + 0.04


def _legend_layout(
    canvas: Canvas, entries: Sequence[_Entry], width: float, max_rows: int, scores: Sequence[float] | None = None
) -> _Legend:
    """Which entries fit, in how many columns and rows. When not all do, those with the highest
    ``scores`` stay (in their order) and a last entry says how many were left out."""
    longest = max((canvas.text_width(e.label, LEGEND_SIZE) for e in entries), default=0.3)
    column = min(width, 0.42 + longest)
    columns = max(1, int(width // column))
    shown = list(entries)
    if len(shown) > columns * max_rows:
        keep = columns * max_rows - 1
        ranked = sorted(range(len(shown)), key=lambda i: -(scores[i] if scores else -i))[:keep]
        hidden = len(shown) - keep
        shown = [shown[i] for i in sorted(ranked)] + [_Entry(f"+{hidden} more series", MUTED, kind="none")]
    return _Legend(shown, columns, math.ceil(len(shown) / columns), width / columns)


def _draw_legend(canvas: Canvas, box: Box, legend: _Legend, gid: str) -> None:
    ax = canvas.area(box, gid)
    for i, entry in enumerate(legend.entries):
        x, y = (i % legend.columns) * legend.column, (i // legend.columns) * LEGEND_LINE + LEGEND_LINE / 2
        if entry.kind == "line":
            ax.plot([x + 0.02, x + 0.22], [y, y], color=entry.color, linestyle=entry.style, lw=1.4)
        elif entry.kind == "bar":
            ax.add_patch(_rectangle(x + 0.05, y - 0.04, 0.14, 0.08, entry.color))
        elif entry.kind == "marker":
            ax.plot([x + 0.12], [y], marker="D", ms=3, color=entry.color, lw=0)
        label = canvas.fit(entry.label, legend.column - 0.37, LEGEND_SIZE)
        ax.text(x + 0.27, y, label, fontsize=LEGEND_SIZE, va="center", color=TEXT)


def _rectangle(x: float, y: float, w: float, h: float, color: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, facecolor=color, edgecolor="none")


# --- time series --------------------------------------------------------------------------------


def _style_axes(ax: Any, unit: str, decimals: int | None) -> None:
    from matplotlib.dates import AutoDateLocator, DateFormatter
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(AutoDateLocator(minticks=3, maxticks=7))
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=UTC))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_value(v, unit, decimals)))
    ax.tick_params(labelsize=TICK_SIZE, colors=MUTED, length=0, pad=2)
    ax.grid(color="#E6E7E9", lw=0.6)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_color("#C7C8CA")
    ax.set_facecolor("none")


def _fit_left_margin(canvas: Canvas, ax: Any, plot: Box, unit: str, decimals: int | None) -> None:
    """Make room on the left for the longest y tick label, whatever the unit makes of it."""
    low, high = ax.get_ylim()
    labels = [format_value(t, unit, decimals) for t in ax.get_yticks() if low <= t <= high]
    margin = 0.1 + max((canvas.text_width(t, TICK_SIZE) for t in labels), default=0.2)
    ax.set_position(canvas.rect(plot.inset(left=margin)))


@dataclass
class _Looks:
    """How each series is drawn and what the legend lists."""

    colors: list[str]
    styles: list[Any]
    entries: list[_Entry]
    scores: list[float]


def _looks(panel: Mapping[str, Any], series: Sequence[Series], bars: bool) -> _Looks:
    """Colour per series (or, with split legends, per label set the targets share, and a line
    style per target); the panel's fixed colours by name win."""
    refs = [t.get("refId", "") for t in panel.get("targets", [])]
    split = None if bars else _split_legends(panel.get("targets", []))
    if split:
        words, shared = split
        keys = sorted({legend_name(shared, s.labels) for s in series})
        color_of = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}
        colors = [color_of[legend_name(shared, s.labels)] for s in series]
        styles = [STYLES[refs.index(s.ref_id) % len(STYLES)] if s.ref_id in refs else "-" for s in series]
        entries = [_Entry(k, color_of[k]) for k in keys if k]  # "" is `or vector(0)`: the styles name it
        entries += [_Entry(words[r], MUTED, STYLES[i % len(STYLES)]) for i, r in enumerate(refs) if r in words]
        return _Looks(colors, styles, entries, [math.inf] * len(entries))
    fixed = override_colors(panel)
    colors = [fixed.get(s.name, PALETTE[i % len(PALETTE)]) for i, s in enumerate(series)]
    kind = "bar" if bars else "line"
    entries = [_Entry(s.name or "value", c, kind=kind) for s, c in zip(series, colors, strict=True)]
    return _Looks(colors, ["-"] * len(series), entries, [s.peak() for s in series])


def _plot_bars(ax: Any, series: Sequence[Series], colors: Sequence[str]) -> None:
    """Stacked bars, one stack per time bucket (Grafana's bars with ``stacking: normal``)."""
    bottoms: dict[float, float] = {}
    for s, color in zip(series, colors, strict=True):
        step = min((b - a for a, b in zip(s.times, s.times[1:], strict=False)), default=60.0)
        xs, heights, lows = [], [], []
        for t, v in zip(s.times, s.values, strict=True):
            if math.isfinite(v) and v:
                xs.append(_days(t))
                heights.append(v)
                lows.append(bottoms.get(t, 0.0))
                bottoms[t] = bottoms.get(t, 0.0) + v
        ax.bar(xs, heights, bottom=lows, width=step / 86400 * 0.85, color=color, label=s.name, linewidth=0)


def _y_limits(ax: Any, values: Sequence[float], bars: bool) -> None:
    low, top = min(values), max(values)
    if top == low == 0:
        ax.set_ylim(0, 1)
    elif 0 <= low <= 0.25 * top or bars:  # counts and rates start at 0; an SLI near 100% is zoomed in
        ax.set_ylim(0, top * 1.08)


def draw_timeseries(
    canvas: Canvas, box: Box, panel: Mapping[str, Any], results: Sequence[QueryResult], ctx: Context
) -> int:
    """Lines (or stacked bars, for ``drawStyle: bars``) over the dashboard's time range, with
    exemplars as diamonds and a legend below, in the panel's unit."""
    defaults = _defaults(panel)
    unit, decimals = defaults.get("unit", ""), defaults.get("decimals")
    bars = (defaults.get("custom") or {}).get("drawStyle") == "bars"
    series = [s for s in panel_series(results, ctx) if any(math.isfinite(v) for v in s.values)]
    if not series:
        return 0
    points = {(e.time, e.trace_id): e for r in results for e in exemplars(r) if math.isfinite(e.value)}
    if len(points) > MAX_EXEMPLARS:  # an even sample: thousands of dots hide the lines
        keys = sorted(points)
        points = {k: points[k] for k in keys[:: math.ceil(len(keys) / MAX_EXEMPLARS)]}
    looks = _looks(panel, series, bars)
    if points:
        looks.entries.append(_Entry("exemplar (a request's trace)", EXEMPLAR_COLOR, kind="marker"))
        looks.scores.append(math.inf)
    max_rows = max(1, int(box.h * 0.32 / LEGEND_LINE))
    legend = _legend_layout(canvas, looks.entries, box.w - 0.1, max_rows, looks.scores)
    plot = box.inset(top=0.04, bottom=legend.height + 0.2, right=0.05)
    ax = canvas.axes(plot, f"panel-{panel.get('id')}-plot")
    _style_axes(ax, unit, decimals)
    if bars:
        _plot_bars(ax, series, looks.colors)
    else:
        for s, color, style in zip(series, looks.colors, looks.styles, strict=True):
            ax.plot([_days(t) for t in s.times], s.values, color=color, linestyle=style, lw=1.2, label=s.name)
    if points:
        ax.scatter(
            [_days(e.time) for e in points.values()],
            [e.value for e in points.values()],
            marker="D",
            s=5,
            color=EXEMPLAR_COLOR,
            alpha=0.5,
            linewidths=0,
            zorder=3,
            label="exemplars",
        )
    ax.set_xlim(_days(ctx.time_range.start), _days(ctx.time_range.end))
    finite = [v for s in series for v in s.values if math.isfinite(v)] + [e.value for e in points.values()]
    _y_limits(ax, finite, bars)
    _fit_left_margin(canvas, ax, plot, unit, decimals)
    legend_box = Box(box.x + 0.1, box.y + box.h - legend.height, box.w - 0.1, legend.height)
    _draw_legend(canvas, legend_box, legend, f"panel-{panel.get('id')}-legend")
    return len(series)


# --- single values ------------------------------------------------------------------------------


def _values(panel: Mapping[str, Any], results: Sequence[QueryResult], ctx: Context) -> list[tuple[str, float]]:
    return [(s.name, s.last()) for s in panel_series(results, ctx)]


def _grid(n: int, box: Box, aspect: float) -> tuple[int, int]:
    """Columns and rows for ``n`` tiles that makes each as large as it can be at ``aspect`` (w/h)."""
    best = (1, n)
    best_size = 0.0
    for columns in range(1, n + 1):
        rows = math.ceil(n / columns)
        size = min(box.w / columns / aspect, box.h / rows)
        if size > best_size:
            best, best_size = (columns, rows), size
    return best


def draw_stat(canvas: Canvas, box: Box, panel: Mapping[str, Any], results: Sequence[QueryResult], ctx: Context) -> int:
    """Big numbers, one tile per series, coloured by the thresholds, all at one size that fits
    the longest; the series' name above each when there are several or the target names them
    (``textMode: name`` shows the name alone, in the place of the number)."""
    defaults = _defaults(panel)
    values = _values(panel, results, ctx)
    if not values:
        return 0
    mode = (panel.get("options") or {}).get("textMode", "auto")
    legends = any(t.get("legendFormat") for t in panel.get("targets", []))
    named = mode == "value_and_name" or (mode == "auto" and (len(values) > 1 or legends))
    ax = canvas.area(box, f"panel-{panel.get('id')}-stat")
    columns, rows = _grid(len(values), box, aspect=2.4)
    tile_w, tile_h = box.w / columns, box.h / rows
    texts = [
        name if mode == "name" else format_value(v, defaults.get("unit"), defaults.get("decimals"))
        for name, v in values
    ]
    widest = max(canvas.text_width(t, 10, bold=True) for t in texts) or 0.1
    size = max(6.0, min(30.0, 10 * (tile_w * 0.9) / widest, tile_h * (0.42 if named else 0.6) * 72))
    for i, ((name, value), text) in enumerate(zip(values, texts, strict=True)):
        cx, top = (i % columns + 0.5) * tile_w, (i // columns) * tile_h
        color = threshold_color(value, defaults) if math.isfinite(value) else MUTED
        if named and mode != "name":
            label = canvas.fit(name, tile_w - 0.1, 6.5)
            ax.text(cx, top + tile_h * 0.2, label, fontsize=6.5, ha="center", va="center", color=MUTED)
        value_y = top + tile_h * (0.62 if named and mode != "name" else 0.5)
        ax.text(cx, value_y, text, fontsize=size, ha="center", va="center", color=color, weight="bold")
    return len(values)


def draw_bargauge(
    canvas: Canvas, box: Box, panel: Mapping[str, Any], results: Sequence[QueryResult], ctx: Context
) -> int:
    """One horizontal bar per series between the panel's min and max, its value at the end."""
    defaults = _defaults(panel)
    values = _values(panel, results, ctx)
    if not values:
        return 0
    low = float(defaults.get("min", min(0.0, *(v for _, v in values if math.isfinite(v)))))
    high = float(defaults.get("max", max(1.0, *(v for _, v in values if math.isfinite(v)))))
    ax = canvas.area(box, f"panel-{panel.get('id')}-bargauge")
    row = box.h / len(values)
    label_w = min(box.w * 0.4, 0.1 + max(canvas.text_width(n, 6.5) for n, _ in values))
    value_w = 0.55
    bar_x, bar_w = label_w + 0.05, max(0.2, box.w - label_w - value_w - 0.1)
    zero = bar_x + bar_w * (0 - low) / (high - low) if low < 0 < high else bar_x
    for i, (name, value) in enumerate(values):
        y = (i + 0.5) * row
        height = min(0.22, row * 0.6)
        ax.text(label_w, y, canvas.fit(name, label_w, 6.5), fontsize=6.5, ha="right", va="center", color=TEXT)
        ax.add_patch(_rectangle(bar_x, y - height / 2, bar_w, height, "#EEEFF1"))
        if math.isfinite(value):
            clipped = min(max(value, low), high)
            end = bar_x + bar_w * (clipped - low) / (high - low)
            ax.add_patch(
                _rectangle(min(zero, end), y - height / 2, abs(end - zero), height, threshold_color(value, defaults))
            )
        text = format_value(value, defaults.get("unit"), defaults.get("decimals"))
        ax.text(
            bar_x + bar_w + 0.06,
            y,
            text,
            fontsize=7,
            va="center",
            color=threshold_color(value, defaults),
            weight="bold",
        )
    if low < 0 < high:
        ax.plot([zero, zero], [0.05, box.h - 0.05], color=MUTED, lw=0.6)
    return len(values)


def draw_gauge(canvas: Canvas, box: Box, panel: Mapping[str, Any], results: Sequence[QueryResult], ctx: Context) -> int:
    """A half-ring per series filled from min to the value, the number in its middle."""
    from matplotlib.patches import Wedge

    defaults = _defaults(panel)
    values = _values(panel, results, ctx)
    if not values:
        return 0
    low, high = float(defaults.get("min", 0.0)), float(defaults.get("max", 100.0))
    ax = canvas.area(box, f"panel-{panel.get('id')}-gauge")
    columns, rows = _grid(len(values), box, aspect=1.6)
    tile_w, tile_h = box.w / columns, box.h / rows
    for i, (name, value) in enumerate(values):
        cx, top = (i % columns + 0.5) * tile_w, (i // columns) * tile_h
        radius = min(tile_w / 2.2, tile_h * 0.7)
        cy = top + tile_h * 0.5 + radius * 0.4
        share = 0.0 if not math.isfinite(value) else min(max((value - low) / (high - low), 0.0), 1.0)
        color = threshold_color(value, defaults) if math.isfinite(value) else MUTED
        # The area's y axis points down, so angles run clockwise: 180° is the left end.
        ax.add_patch(Wedge((cx, cy), radius, 180, 360, width=radius * 0.25, facecolor="#EEEFF1"))
        ax.add_patch(Wedge((cx, cy), radius, 180, 180 + 180 * share, width=radius * 0.25, facecolor=color))
        text = format_value(value, defaults.get("unit"), defaults.get("decimals"))
        ax.text(
            cx,
            cy - radius * 0.2,
            text,
            fontsize=max(7.0, min(20.0, radius * 30)),
            ha="center",
            color=color,
            weight="bold",
        )
        if len(values) > 1 or name:
            ax.text(cx, cy + 0.12, canvas.fit(name, tile_w - 0.1, 6), fontsize=6, ha="center", va="top", color=MUTED)
    return len(values)


# --- heatmap ------------------------------------------------------------------------------------


def draw_heatmap(
    canvas: Canvas, box: Box, panel: Mapping[str, Any], results: Sequence[QueryResult], ctx: Context
) -> int:
    """Requests per latency bucket over time: one row per bucket (its upper bound on the axis),
    darker for more requests, empty cells left white, as Grafana's heatmap of Prometheus buckets."""
    import numpy as np

    defaults = _defaults(panel)
    grid = heatmap(panel_series(results, ctx))
    if not grid.bounds or not grid.times:
        return 0
    counts = np.ma.masked_less_equal(np.array(grid.counts, dtype=float), 1e-9)
    counts = np.ma.masked_invalid(counts)
    if counts.count() == 0:
        return 0
    step = ctx.time_range.query_step
    edges = [_days(t - step / 2) for t in grid.times] + [_days(grid.times[-1] + step / 2)]
    plot = box.inset(top=0.04, bottom=0.2, right=0.75)
    ax = canvas.axes(plot, f"panel-{panel.get('id')}-plot")
    _style_axes(ax, "", None)
    ax.grid(False)
    mesh = ax.pcolormesh(edges, np.arange(len(grid.bounds) + 1), counts, cmap="Oranges", vmin=0)
    labels = [format_value(b, defaults.get("unit", "s")) for b in grid.bounds]
    every = max(1, math.ceil(len(labels) / max(2, int(plot.h / 0.16))))
    ax.set_yticks([i + 0.5 for i in range(0, len(labels), every)], labels[::every])
    ax.set_xlim(_days(ctx.time_range.start), _days(ctx.time_range.end))
    margin = 0.1 + max(canvas.text_width(t, TICK_SIZE) for t in labels)
    ax.set_position(canvas.rect(plot.inset(left=margin)))
    bar = canvas.figure.add_axes(canvas.rect(Box(box.x + box.w - 0.6, plot.y + 0.05, 0.08, plot.h - 0.1)))
    colorbar = canvas.figure.colorbar(mesh, cax=bar)
    colorbar.ax.tick_params(labelsize=TICK_SIZE - 0.5, colors=MUTED, length=0)
    colorbar.outline.set_visible(False)
    bar.set_title("req", fontsize=TICK_SIZE - 0.5, color=MUTED)
    return int(counts.count())
