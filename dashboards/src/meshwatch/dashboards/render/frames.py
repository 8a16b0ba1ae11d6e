"""What a panel draws, made from the query runner's results: series, tables, log lines, graphs.

Grafana turns each datasource's answer into data frames before a panel sees them; this module
does the same for the answers ``meshwatch.dashboards.queries`` keeps (``QueryResult.data``), so
the drawing code never reads a backend's JSON. Pure functions, no matplotlib: tested on
recorded answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..queries import QueryResult

__all__ = [
    "Exemplar",
    "Graph",
    "Heatmap",
    "LogLine",
    "Series",
    "Table",
    "apply_organize",
    "es_series",
    "exemplars",
    "graph_from_tables",
    "heatmap",
    "jaeger_dependency_graph",
    "jaeger_traces_table",
    "legend_name",
    "log_lines",
    "prometheus_series",
    "prometheus_table",
    "raw_documents_table",
]


@dataclass
class Series:
    """One line of a time series panel (or one value of a stat panel, from an instant query)."""

    name: str
    times: list[float]  # epoch seconds
    values: list[float]  # NaN where the backend had no number
    labels: dict[str, str] = field(default_factory=dict)
    ref_id: str = ""

    def last(self) -> float:
        """The last finite value (Grafana's ``lastNotNull``), NaN if there is none."""
        return next((v for v in reversed(self.values) if math.isfinite(v)), math.nan)

    def peak(self) -> float:
        finite = [abs(v) for v in self.values if math.isfinite(v)]
        return max(finite) if finite else -1.0


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    ref_id: str = ""

    def column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]


@dataclass
class Exemplar:
    time: float
    value: float
    trace_id: str


@dataclass
class Heatmap:
    """Counts per latency bucket (rows, upper bounds ascending, "+Inf" last) and time step (columns)."""

    times: list[float]
    bounds: list[float]
    counts: list[list[float]]


@dataclass
class LogLine:
    time: float
    level: str
    service: str
    message: str
    trace_id: str = ""


@dataclass
class Graph:
    """Nodes with their main statistic (None: unknown) and directed edges with theirs."""

    nodes: dict[str, float | None]
    edges: list[tuple[str, str, float | None]]


# --- Prometheus ----------------------------------------------------------------------------------

_LEGEND = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


def legend_name(legend_format: str | None, labels: Mapping[str, str], fallback: str = "") -> str:
    """A series' display name as Grafana makes it: ``legendFormat`` with ``{{label}}`` filled in,
    else ``metric{label="value", ...}``, else ``fallback`` (the expression, for a bare number)."""
    if legend_format and legend_format != "__auto":
        return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), legend_format).strip()
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    if name or rest:
        return f"{name}{{{rest}}}" if rest else name
    return fallback


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def prometheus_series(result: QueryResult, step: float | None = None) -> list[Series]:
    """The series of a Prometheus answer (matrix or vector). With ``step``, a missing step in a
    matrix becomes a NaN point, so a line breaks there as Grafana's does instead of bridging it."""
    data = result.data or {}
    target = result.query.target
    out = []
    for item in data.get("result", []):
        labels = dict(item.get("metric", {}))
        samples = item.get("values") or ([item["value"]] if "value" in item else [])
        times: list[float] = []
        values: list[float] = []
        for stamp, v in samples:
            t = float(stamp)
            if step and times and t - times[-1] > 1.5 * step:
                times.append(times[-1] + step)
                values.append(math.nan)
            times.append(t)
            values.append(_number(v))
        name = legend_name(target.get("legendFormat"), labels, fallback=target.get("expr", ""))
        out.append(Series(name, times, values, labels, result.query.ref_id))
    return out


def prometheus_table(results: Sequence[QueryResult]) -> Table:
    """Instant results as Grafana's table format: one row per series, a column per label, then
    ``Value`` (``Value #<refId>`` when the panel has several targets). Targets are merged on
    their labels, as Grafana's "merge" would, only when there is one target; else rows follow
    each other."""
    several = len(results) > 1
    label_names: list[str] = []
    rows: list[dict[str, Any]] = []
    for result in results:
        value_column = f"Value #{result.query.ref_id}" if several else "Value"
        for item in (result.data or {}).get("result", []):
            labels = {k: v for k, v in item.get("metric", {}).items() if k != "__name__"}
            for name in labels:
                if name not in label_names:
                    label_names.append(name)
            sample = item.get("value") or (item.get("values") or [[0, "NaN"]])[-1]
            rows.append({**labels, value_column: _number(sample[1])})
    value_columns = sorted({k for row in rows for k in row if k.startswith("Value")})
    columns = label_names + value_columns
    return Table(columns, [[row.get(c, "") for c in columns] for row in rows])


def exemplars(result: QueryResult) -> list[Exemplar]:
    """A target's exemplars with their trace id (``trace_id``, or ``traceID`` as some SDKs name it)."""
    out = []
    for series in result.exemplar_data or []:
        for item in series.get("exemplars", []):
            labels = item.get("labels", {})
            trace_id = labels.get("trace_id") or labels.get("traceID") or ""
            out.append(Exemplar(float(item["timestamp"]), _number(item["value"]), trace_id))
    return out


def heatmap(series: Sequence[Series]) -> Heatmap:
    """Cumulative ``le`` buckets (Grafana's "heatmap" format) into counts per bucket: each
    bucket minus the one below it, as Grafana does before drawing."""
    by_bound: dict[float, Series] = {}
    for s in series:
        le = s.labels.get("le")
        if le is not None:
            by_bound[math.inf if le == "+Inf" else float(le)] = s
    bounds = sorted(by_bound)
    times = sorted({t for s in by_bound.values() for t in s.times})
    index = {t: i for i, t in enumerate(times)}
    cumulative = []
    for bound in bounds:
        row = [math.nan] * len(times)
        for t, v in zip(by_bound[bound].times, by_bound[bound].values, strict=True):
            row[index[t]] = v
        cumulative.append(row)
    counts = []
    for i, row in enumerate(cumulative):
        below = cumulative[i - 1] if i else [0.0] * len(times)
        counts.append(
            [
                max(0.0, v - b) if math.isfinite(v) and math.isfinite(b) else math.nan
                for v, b in zip(row, below, strict=True)
            ]
        )
    return Heatmap(times, bounds, counts)


# --- transformations ----------------------------------------------------------------------------


def apply_organize(table: Table, transformations: Iterable[Mapping[str, Any]] | None) -> Table:
    """Grafana's ``organize`` transformation: drop excluded fields (and their sub-fields), rename."""
    for t in transformations or []:
        if t.get("id") != "organize":
            continue
        options = t.get("options") or {}
        excluded = {k for k, v in (options.get("excludeByName") or {}).items() if v}
        keep = [i for i, c in enumerate(table.columns) if c not in excluded and c.split(".")[0] not in excluded]
        rename = options.get("renameByName") or {}
        table = Table(
            [rename.get(table.columns[i], table.columns[i]) for i in keep],
            [[row[i] for i in keep] for row in table.rows],
            table.ref_id,
        )
    return table


def graph_from_tables(tables: Sequence[Table]) -> Graph:
    """Grafana's node graph frames: a table with ``source`` and ``target`` holds the edges, one
    with ``id`` the nodes; ``mainstat`` is each one's number. Nodes only named by an edge are added."""
    nodes: dict[str, float | None] = {}
    edges: list[tuple[str, str, float | None]] = []
    for table in tables:
        cols = table.columns
        stat = cols.index("mainstat") if "mainstat" in cols else None
        if "source" in cols and "target" in cols:
            s, t = cols.index("source"), cols.index("target")
            edges += [(str(r[s]), str(r[t]), r[stat] if stat is not None else None) for r in table.rows]
        elif "id" in cols:
            i = cols.index("id")
            nodes.update({str(r[i]): r[stat] if stat is not None else None for r in table.rows})
    for source, target, _ in edges:
        nodes.setdefault(source, None)
        nodes.setdefault(target, None)
    return Graph(nodes, edges)


# --- Elasticsearch ------------------------------------------------------------------------------


def _es_time(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value) / 1000
    text = str(value)
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?", text)
    if match:  # nanosecond fractions are more than fromisoformat takes
        fraction = (match.group(2) or ".0")[:7]
        zone = match.group(3) or "Z"
        text = match.group(1) + fraction + ("+00:00" if zone == "Z" else zone)
    return datetime.fromisoformat(text).timestamp()


def es_series(result: QueryResult) -> list[Series]:
    """A ``count`` target's buckets as series: one per terms key (named by it), points from the
    date histogram; without a terms level one series named ``Count``."""
    aggs = result.query.target.get("bucketAggs") or []
    answer = (result.data or {}).get("aggregations") or {}
    if not aggs or aggs[0]["id"] not in answer:
        return []
    out: list[Series] = []

    def walk(node: Mapping[str, Any], level: int, names: list[str]) -> None:
        agg = aggs[level]
        buckets = node.get("buckets", [])
        if agg["type"] == "date_histogram":
            times = [float(b["key"]) / 1000 for b in buckets]
            values = [float(b.get("doc_count", 0)) for b in buckets]
            out.append(Series(" ".join(names) or "Count", times, values, {}, result.query.ref_id))
            return
        for bucket in buckets:
            child = aggs[level + 1]["id"] if level + 1 < len(aggs) else None
            key = str(bucket.get("key_as_string", bucket.get("key")))
            if child and child in bucket:
                walk(bucket[child], level + 1, [*names, key])
            else:
                out.append(Series(key, [], [float(bucket.get("doc_count", 0))], {}, result.query.ref_id))

    walk(answer[aggs[0]["id"]], 0, [])
    return out


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def raw_documents_table(result: QueryResult) -> Table:
    """A ``raw_data`` target's hits, newest first: one row per document, its fields flattened to
    dotted names (``service.name``), ``@timestamp`` first."""
    docs = [_flatten(hit.get("_source", {})) for hit in (result.data or {}).get("hits", {}).get("hits", [])]
    columns: list[str] = ["@timestamp"] if any("@timestamp" in d for d in docs) else []
    for doc in docs:
        columns += [k for k in doc if k not in columns]
    return Table(columns, [[d.get(c, "") for c in columns] for d in docs], result.query.ref_id)


def log_lines(result: QueryResult) -> list[LogLine]:
    """A ``logs`` target's hits as log lines, in the order Elasticsearch returned them (newest first)."""
    lines = []
    for hit in (result.data or {}).get("hits", {}).get("hits", []):
        doc = _flatten(hit.get("_source", {}))
        lines.append(
            LogLine(
                time=_es_time(doc.get("@timestamp", 0)),
                level=str(doc.get("log.level", "")),
                service=str(doc.get("service.name", "")),
                message=str(doc.get("message", "")),
                trace_id=str(doc.get("trace.id", "")),
            )
        )
    return lines


# --- Jaeger -------------------------------------------------------------------------------------


def jaeger_traces_table(result: QueryResult) -> Table:
    """Jaeger search results as Grafana's Jaeger datasource lists them, newest first: trace id,
    name (root service: operation), start time, duration, spans, and how many spans failed."""
    rows = []
    for trace in result.data or []:
        spans = trace.get("spans", [])
        if not spans:
            continue
        ids = {s["spanID"] for s in spans}
        roots = [s for s in spans if not any(r.get("spanID") in ids for r in s.get("references", []))]
        root = min(roots or spans, key=lambda s: s["startTime"])
        service = trace.get("processes", {}).get(root.get("processID"), {}).get("serviceName", "?")
        start = min(s["startTime"] for s in spans)
        end = max(s["startTime"] + s["duration"] for s in spans)
        errors = sum(
            1
            for s in spans
            for tag in s.get("tags", [])
            if (tag["key"] == "error" and tag["value"] in (True, "true"))
            or (tag["key"] == "otel.status_code" and tag["value"] == "ERROR")
        )
        rows.append(
            [
                trace["traceID"],
                f"{service}: {root['operationName']}",
                start / 1e6,
                (end - start) / 1e6,
                len(spans),
                errors,
            ]
        )
    rows.sort(key=lambda r: r[2], reverse=True)
    return Table(["Trace ID", "Trace name", "Start time", "Duration", "Spans", "Errors"], rows, result.query.ref_id)


def jaeger_dependency_graph(result: QueryResult) -> Graph:
    """Jaeger's ``/api/dependencies``: edges parent → child with their call count over the time
    range. A service's calls to itself (its client spans to a database or cache, which has no
    service of its own) are left out, as in Jaeger's own graph."""
    nodes: dict[str, float | None] = {}
    edges: list[tuple[str, str, float | None]] = []
    for dep in result.data or []:
        parent, child, calls = dep["parent"], dep["child"], float(dep.get("callCount", 0))
        nodes.setdefault(parent, None)
        nodes.setdefault(child, None)
        if parent != child:
            edges.append((parent, child, calls))
    return Graph(nodes, edges)
