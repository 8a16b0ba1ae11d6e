"""Each panel type is drawn from what the query runner returns, as a reader would see it.

The results are the runner's own ``QueryResult`` objects, rebuilt from answers recorded on the
running demo (``data/recorded-results.json``: ``meshwatch-demo up --rate 10`` with payments at
``--error-rate 0.3``, 20 minutes ending at its ``time_range.end``, trimmed to a few series,
documents and traces). No server is needed: the tests look at the figure's artists — lines,
bars, cells, circles, texts — and at the numbers in the panel's unit.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from matplotlib.collections import PathCollection, QuadMesh
from matplotlib.colors import to_hex
from matplotlib.patches import Circle, Rectangle, Wedge
from matplotlib.text import Annotation
from PIL import Image

from meshwatch.dashboards import build, cli
from meshwatch.dashboards.queries import PanelQuery, QueryResult, TimeRange
from meshwatch.dashboards.render import dashboard_figure, render_dashboard
from meshwatch.dashboards.render.frames import (
    Series,
    apply_organize,
    heatmap,
    legend_name,
    prometheus_table,
)
from meshwatch.dashboards.render.units import format_value

RECORDED = json.loads((Path(__file__).parent / "data" / "recorded-results.json").read_text())
TIME_RANGE = TimeRange(end=RECORDED["time_range"]["end"], seconds=RECORDED["time_range"]["seconds"])
MODELS = build.load_committed()


def _result(item: dict[str, Any]) -> QueryResult:
    return QueryResult(
        PanelQuery(**item["query"]),
        item["items"],
        error=item["error"],
        exemplars=item["exemplars"],
        nan_series=item["nan_series"],
        data=copy.deepcopy(item["data"]),
        exemplar_data=copy.deepcopy(item["exemplar_data"]),
    )


def _recorded(dashboard: str, panel_id: int) -> list[QueryResult]:
    found = [
        _result(r)
        for r in RECORDED["results"]
        if r["query"]["dashboard"] == f"meshwatch-{dashboard}" and r["query"]["panel_id"] == panel_id
    ]
    assert found, f"nothing recorded for {dashboard} #{panel_id}"
    return found


def _panel(dashboard: str, panel_id: int) -> dict[str, Any]:
    return next(p for p in MODELS[dashboard]["panels"] if p["id"] == panel_id)


def _draw(panel: dict[str, Any], results: list[QueryResult]) -> tuple[Any, Any]:
    """A one-panel dashboard at the panel's own size, drawn from ``results``."""
    panel = {**panel, "gridPos": {**panel["gridPos"], "x": 0, "y": 0}}
    return dashboard_figure({"title": "test", "panels": [panel]}, results, time_range=TIME_RANGE)


def _axes(fig: Any, panel: dict[str, Any], part: str) -> Any:
    gid = f"panel-{panel['id']}-{part}"
    found = [ax for ax in fig.axes if ax.get_gid() == gid]
    assert found, f"no {gid} in {[ax.get_gid() for ax in fig.axes]}"
    return found[0]


def _texts(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.texts]


# --- time series ---------------------------------------------------------------------------------


def test_time_series_draws_a_line_per_series_with_its_legend_and_unit() -> None:
    panel = _panel("service-overview", 2)  # Request rate, reqps
    fig, rendered = _draw(panel, _recorded("service-overview", 2))
    plot = _axes(fig, panel, "plot")
    lines = {line.get_label(): line for line in plot.get_lines()}
    assert set(lines) == {"orders", "payments"}
    assert all(any(math.isfinite(y) and y > 0.5 for y in line.get_ydata()) for line in lines.values())
    fig.canvas.draw()
    ticks = [t.get_text() for t in plot.get_yticklabels() if t.get_text()]
    assert ticks and all(t.endswith("req/s") for t in ticks), ticks
    times = [t.get_text() for t in plot.get_xticklabels() if t.get_text()]
    assert times and all(len(t) == 5 and t[2] == ":" for t in times), times  # HH:MM
    assert {"orders", "payments"} <= set(_texts(_axes(fig, panel, "legend")))
    assert rendered.drawn == {"Request rate": 2}


def test_percentiles_share_colours_by_service_and_styles_by_target_with_exemplars() -> None:
    panel = _panel("service-overview", 4)  # p50 / p95 / p99, exemplars on
    fig, _ = _draw(panel, _recorded("service-overview", 4))
    plot = _axes(fig, panel, "plot")
    lines = plot.get_lines()
    assert len(lines) == 6  # 2 services x 3 percentiles
    assert {line.get_linestyle() for line in lines} == {"-", "--", ":"}
    by_service = {}
    for line in lines:
        by_service.setdefault(line.get_label().split()[0], set()).add(to_hex(line.get_color()))
    assert set(by_service) == {"orders", "payments"}
    assert all(len(colors) == 1 for colors in by_service.values())  # one colour per service
    legend = _texts(_axes(fig, panel, "legend"))
    assert {"orders", "payments", "p50", "p95", "p99", "exemplar (a request's trace)"} <= set(legend)
    dots = [c for c in plot.collections if isinstance(c, PathCollection)]
    recorded = {
        (e["timestamp"], e["labels"].get("trace_id"))
        for r in _recorded("service-overview", 4)
        for s in r.exemplar_data or []
        for e in s["exemplars"]
    }
    assert len(dots) == 1 and len(dots[0].get_offsets()) == len(recorded) > 0


def test_stacked_bars_take_the_colours_the_panel_fixes_for_log_levels() -> None:
    panel = _panel("logs", 1)  # Log volume by level: bars, stacked, error red
    fig, rendered = _draw(panel, _recorded("logs", 1))
    plot = _axes(fig, panel, "plot")
    bars = [p for p in plot.patches if isinstance(p, Rectangle)]
    assert bars
    colors = {c.get_label(): to_hex(c.patches[0].get_facecolor()) for c in plot.containers if c.patches}
    assert colors["error"] == "#e02f44" and colors["info"] == "#56a64b"
    assert {"error", "info", "warn"} <= set(_texts(_axes(fig, panel, "legend")))
    assert rendered.drawn["Log volume by level"] >= 3


def test_a_legend_too_long_for_its_panel_says_how_many_series_it_leaves_out() -> None:
    panel = copy.deepcopy(_panel("service-overview", 2))
    panel["gridPos"] = {"x": 0, "y": 0, "w": 6, "h": 6}
    result = _recorded("service-overview", 2)[0]
    template = result.data["result"][0]
    result.data["result"] = [{**template, "metric": {"job": f"service-with-a-long-name-{i:02d}"}} for i in range(40)]
    fig, _ = _draw(panel, [result])
    assert len(_axes(fig, panel, "plot").get_lines()) == 40
    legend = _texts(_axes(fig, panel, "legend"))
    assert legend[-1].startswith("+") and legend[-1].endswith("more series")
    shown = len(legend) - 1
    assert legend[-1] == f"+{40 - shown} more series"


# --- single values ------------------------------------------------------------------------------


def test_stat_panels_show_big_numbers_in_their_unit_and_names_when_several() -> None:
    panel = _panel("pipeline-health", 3)  # Backends reachable, one value, percentunit
    fig, _ = _draw(panel, _recorded("pipeline-health", 3))
    assert _texts(_axes(fig, panel, "stat")) == ["100%"]

    panel = _panel("slo", 1)  # SLI over the period, 6 services x SLOs
    results = _recorded("slo", 1)
    fig, rendered = _draw(panel, results)
    texts = _texts(_axes(fig, panel, "stat"))
    names = [legend_name("{{service}} {{slo}}", s["metric"]) for s in results[0].data["result"]]
    assert set(names) <= set(texts)
    values = [t for t in texts if t.endswith("%")]
    assert len(values) == len(names) == rendered.drawn["SLI over the SLO period"]
    assert all(len(v.split(".")[-1]) == 4 for v in values)  # decimals: 3, e.g. "99.941%"


def test_stat_in_name_mode_shows_the_collector_and_its_version() -> None:
    panel = _panel("pipeline-health", 2)
    assert panel["options"]["textMode"] == "name"
    fig, _ = _draw(panel, _recorded("pipeline-health", 2))
    assert _texts(_axes(fig, panel, "stat")) == ["127.0.0.1:8888 0.1.0"]


def test_bar_gauge_draws_a_bar_per_series_between_min_and_max() -> None:
    panel = _panel("slo", 3)  # Error budget remaining, -1 … 1
    results = _recorded("slo", 3)
    fig, _ = _draw(panel, results)
    ax = _axes(fig, panel, "bargauge")
    series = results[0].data["result"]
    filled = [p for p in ax.patches if to_hex(p.get_facecolor()) != "#eeeff1"]
    assert len(filled) == len(series)
    texts = _texts(ax)
    for s in series:
        assert format_value(float(s["value"][1]), "percentunit") in texts


def test_gauge_fills_its_arc_to_the_value() -> None:
    panel = {
        **_panel("slo", 1),  # the SLI values, drawn as gauges
        "type": "gauge",
        "fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1}},
    }
    results = _recorded("slo", 1)
    fig, _ = _draw(panel, results)
    ax = _axes(fig, panel, "gauge")
    wedges = [p for p in ax.patches if isinstance(p, Wedge)]
    assert len(wedges) == 2 * len(results[0].data["result"])  # track + fill
    fills = wedges[1::2]
    series = sorted(results[0].data["result"], key=lambda s: legend_name("{{service}} {{slo}}", s["metric"]))
    for wedge, s in zip(fills, series, strict=True):
        assert wedge.theta2 - wedge.theta1 == pytest.approx(180 * float(s["value"][1]), abs=0.01)


# --- heatmap ------------------------------------------------------------------------------------


def test_heatmap_buckets_are_de_cumulated_and_drawn_per_bucket_bound() -> None:
    cumulative = [
        Series("", [0, 60], [1, 2], {"le": "0.1"}),
        Series("", [0, 60], [5, 2], {"le": "+Inf"}),
        Series("", [0, 60], [3, 2], {"le": "0.5"}),
    ]
    grid = heatmap(cumulative)
    assert grid.bounds == [0.1, 0.5, math.inf]
    assert grid.counts == [[1, 2], [2, 0], [2, 0]]

    panel = _panel("endpoint-detail", 1)
    fig, rendered = _draw(panel, _recorded("endpoint-detail", 1))
    plot = _axes(fig, panel, "plot")
    meshes = [c for c in plot.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 1
    labels = [t.get_text() for t in plot.get_yticklabels()]
    assert "5 ms" in labels or "10 ms" in labels
    assert rendered.drawn["Latency heatmap"] > 10  # cells with requests


# --- tables and logs ----------------------------------------------------------------------------


def test_prometheus_table_lists_routes_slowest_first_in_seconds() -> None:
    panel = _panel("endpoint-detail", 3)
    results = _recorded("endpoint-detail", 3)
    fig, _ = _draw(panel, results)
    texts = _texts(_axes(fig, panel, "table"))
    assert texts[:2] == ["http_route", "Value"]
    slowest = max(results[0].data["result"], key=lambda s: float(s["value"][1]))
    assert texts[2:4] == [slowest["metric"]["http_route"], format_value(float(slowest["value"][1]), "s")]
    assert texts[3].endswith("ms")


def test_error_log_table_shows_time_service_level_message_and_trace_id_first() -> None:
    panel = _panel("logs", 3)
    results = _recorded("logs", 3)
    fig, rendered = _draw(panel, results)
    ax = _axes(fig, panel, "table")
    texts = _texts(ax)
    assert texts[:5] == ["@timestamp", "service.name", "log.level", "message", "trace.id"]
    assert "_id" not in texts and "resource" not in texts  # the panel's organize excludes them
    hits = results[0].data["hits"]["hits"]
    assert hits[0]["_source"]["trace"]["id"] in texts
    levels = [t for t in ax.texts if t.get_text() == "error"]
    assert levels and all(to_hex(t.get_color()) == "#e02f44" for t in levels)
    assert rendered.drawn["Latest error logs"] == len(hits)


def test_jaeger_search_table_lists_traces_newest_first() -> None:
    panel = _panel("endpoint-detail", 7)
    results = _recorded("endpoint-detail", 7)
    fig, _ = _draw(panel, results)
    texts = _texts(_axes(fig, panel, "table"))
    assert texts[:6] == ["Trace ID", "Trace name", "Start time", "Duration", "Spans", "Errors"]
    traces = sorted(results[0].data, key=lambda t: min(s["startTime"] for s in t["spans"]), reverse=True)
    ids = [t for t in texts if len(t) == 32 and all(c in "0123456789abcdef" for c in t)]
    assert ids == [t["traceID"] for t in traces]
    assert any(t.startswith("gateway: ") for t in texts)


def test_logs_panel_draws_newest_lines_with_time_level_and_service() -> None:
    panel = _panel("logs", 4)
    results = _recorded("logs", 4)
    fig, _ = _draw(panel, results)
    lines = _texts(_axes(fig, panel, "logs"))
    hits = results[0].data["hits"]["hits"]
    assert len(lines) == len(hits)
    first = hits[0]["_source"]
    assert first["service"]["name"] in lines[0] and first["log"]["level"].upper() in lines[0]
    assert first["message"][:30] in lines[0]


def test_organize_renames_and_excludes_fields_and_their_sub_fields() -> None:
    table = prometheus_table(_recorded("service-dependencies", 1))
    assert "client" in table.columns and "Value #edges" in table.columns
    organized = apply_organize(table, _panel("service-dependencies", 1)["transformations"])
    assert "source" in organized.columns and "mainstat" in organized.columns
    assert "client" not in organized.columns


# --- node graphs --------------------------------------------------------------------------------


def test_service_graph_draws_services_and_edges_with_their_request_rates() -> None:
    panel = _panel("service-dependencies", 1)
    results = _recorded("service-dependencies", 1)
    fig, rendered = _draw(panel, results)
    ax = _axes(fig, panel, "graph")
    edges = next(r for r in results if r.query.ref_id == "edges").data["result"]
    circles = [p for p in ax.patches if isinstance(p, Circle)]
    names = {e["metric"]["client"] for e in edges} | {e["metric"]["server"] for e in edges}
    nodes = {s["metric"]["id"] for s in next(r for r in results if r.query.ref_id == "nodes").data["result"]}
    assert len(circles) == len(names | nodes) == rendered.drawn["Service graph"]
    arrows = [c for c in ax.texts if isinstance(c, Annotation)]
    assert len(arrows) == len(edges)
    texts = _texts(ax)
    assert {"gateway", "orders"} <= set(texts)
    edge_labels = [t for t in texts if t.endswith(" req/s")]  # a node's reads "1.2\nreq/s"
    assert len(edge_labels) == len(edges)


def test_jaeger_dependency_graph_leaves_out_calls_to_self() -> None:
    panel = _panel("service-dependencies", 6)
    results = _recorded("service-dependencies", 6)
    fig, _ = _draw(panel, results)
    ax = _axes(fig, panel, "graph")
    deps = results[0].data
    between = [d for d in deps if d["parent"] != d["child"]]
    assert len([c for c in ax.texts if isinstance(c, Annotation)]) == len(between)
    for dep in between:
        assert f"{dep['callCount']} calls" in _texts(ax)


# --- the whole picture --------------------------------------------------------------------------


def test_panels_without_data_or_with_a_failed_query_say_so() -> None:
    panel = _panel("service-overview", 2)
    empty = _recorded("service-overview", 2)[0]
    nothing = QueryResult(empty.query, 0, data={"resultType": "matrix", "result": []})
    fig, rendered = _draw(panel, [nothing])
    assert rendered.empty == ["Request rate"]
    assert _texts(_axes(fig, panel, "nodata")) == ["No data"]

    failed = QueryResult(empty.query, 0, error="RuntimeError: HTTP 400 from prometheus: parse error")
    fig, rendered = _draw(panel, [failed])
    assert rendered.errors == {"Request rate": ["A: RuntimeError: HTTP 400 from prometheus: parse error"]}
    assert _texts(_axes(fig, panel, "nodata"))[0].startswith("Query failed: A: RuntimeError")


def test_a_dashboard_renders_to_a_small_png_with_every_recorded_panel(tmp_path: Path) -> None:
    model = MODELS["slo"]
    results = [*_recorded("slo", 1), *_recorded("slo", 3)]
    path = tmp_path / "slo.png"
    rendered = render_dashboard(model, results, path, time_range=TIME_RANGE, variables=RECORDED["variables"]["slo"])
    assert rendered.drawn["SLI over the SLO period"] == 6
    assert rendered.drawn["Error budget remaining"] == 6
    assert set(rendered.empty) == {"Objective", "SLI (5m)", "Error budget remaining over time", "Burn rate by window"}
    with Image.open(path) as image:
        assert image.mode == "P"  # palette PNG: small
        rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in model["panels"])
        assert image.size[0] == pytest.approx(100 * (0.3 + 24 * 0.66), abs=2)
        assert image.size[1] == pytest.approx(100 * (0.55 + rows * 0.3 + 0.15), abs=2)
    assert path.stat().st_size < 300_000


@pytest.mark.parametrize(
    ("value", "unit", "decimals", "expected"),
    [
        (0.0421, "s", None, "42.1 ms"),
        (1.5, "s", None, "1.5 s"),
        (0.00035, "s", None, "350 µs"),
        (0.3, "percentunit", None, "30%"),
        (0.99941, "percentunit", 3, "99.941%"),
        (2.5, "reqps", None, "2.5 req/s"),
        (1500, "reqps", None, "1.5 K req/s"),
        (120 * 2**20, "bytes", None, "120 MiB"),
        (512, "bytes", None, "512 B"),
        (0, "short", None, "0"),
        (float("nan"), "s", None, "–"),
        (float("inf"), "s", None, "+Inf"),
    ],
)
def test_units_read_as_grafana_writes_them(value: float, unit: str, decimals: int | None, expected: str) -> None:
    assert format_value(value, unit, decimals) == expected


# --- the command ---------------------------------------------------------------------------------


def test_render_png_without_backends_draws_the_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render-png", "--out", str(tmp_path), "--dashboard", "slo"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["dashboards-slo.png"]
    assert str(tmp_path / "dashboards-slo.png") in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--var", "service"], "--var needs NAME=VALUE"),
        (["--var", "nosuch:service=x"], "no dashboard 'nosuch'"),
        (["--dashboard", "nosuch"], "unknown dashboard(s) ['nosuch']"),
    ],
)
def test_render_png_refuses_bad_arguments_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli.main(["render-png", "--out", str(tmp_path), *args]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_variable_can_be_pinned_in_one_dashboard_only() -> None:
    args = cli._parser().parse_args(
        ["render-png", "--var", "endpoint-detail:service=gateway", "--var", "environment=demo"]
    )
    pins = cli._pins(args, MODELS)
    assert pins["endpoint-detail"] == {"service": "gateway", "environment": "demo"}
    assert pins["service-overview"] == {"environment": "demo"}


def test_end_takes_unix_seconds_or_iso_8601() -> None:
    assert cli._timestamp("1795646680") == 1795646680.0
    assert cli._timestamp("2026-11-25T22:44:40Z") == 1795646680.0
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["render-png", "--end", "yesterday"])
