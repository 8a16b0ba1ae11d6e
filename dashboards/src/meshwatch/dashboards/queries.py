"""Every panel's queries, with template variables filled in, run against the live backends.

This is how meshwatch proves "no empty panels" without a Grafana server: it does what Grafana's
datasources would do with each target — PromQL to Prometheus' HTTP API, the panel's
Elasticsearch query (Lucene + aggregations) to ``_search``, Jaeger searches and dependency
graphs to Jaeger's query API — and reports per panel whether data came back.

    results = run_dashboards(dashboards(), Backends(prometheus=..., elasticsearch=..., jaeger=...))
    empty = [r for r in results if not r.has_data]

Each result also keeps what the backend answered (``QueryResult.data``: Prometheus' ``data``
object of ``/api/v1/query_range`` or ``/api/v1/query``, the Elasticsearch response, Jaeger's
``data`` list), so ``meshwatch.dashboards.render`` can draw the panel from it.

Variables are resolved the way Grafana's defaults would: "All" for variables that allow it
(their ``allValue``), else the first value their own query returns; pass ``variables`` to pin
any of them (``{"service": "orders"}``).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from .check import BUILTIN_VARIABLES, variable_names
from .datasources import LOG_INDEX

__all__ = [
    "Backends",
    "DashboardRun",
    "PanelQuery",
    "QueryResult",
    "TimeRange",
    "es_search_body",
    "extract_queries",
    "interpolate",
    "resolve_variables",
    "run_dashboard",
    "run_dashboards",
    "run_query",
]

VariableValue = str | list[str]


@dataclass(frozen=True)
class Backends:
    """Base URLs of the live servers (``http://127.0.0.1:9090`` …)."""

    prometheus: str | None = None
    elasticsearch: str | None = None
    jaeger: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class TimeRange:
    """The dashboard time range the queries run over, and Grafana's interval variables for it."""

    end: float = field(default_factory=time.time)
    seconds: int = 3600
    rate_interval: str = "1m"
    interval: str = "15s"
    #: Seconds between the points of a range query; None: about 200 points over the range.
    step: int | None = None

    @property
    def start(self) -> float:
        return self.end - self.seconds

    @property
    def query_step(self) -> int:
        """The ``step`` of ``/api/v1/query_range`` (what Grafana derives from the panel width)."""
        return self.step or max(1, self.seconds // 200)

    def builtins(self) -> dict[str, str]:
        return {
            "__rate_interval": self.rate_interval,
            "__interval": self.interval,
            "__interval_ms": str(_seconds(self.interval) * 1000),
            "__range": f"{self.seconds}s",
            "__range_s": str(self.seconds),
            "__range_ms": str(self.seconds * 1000),
            "__from": str(int(self.start * 1000)),
            "__to": str(int(self.end * 1000)),
        }


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel, its variables filled in."""

    dashboard: str
    panel_id: int
    panel_title: str
    panel_type: str
    ref_id: str
    datasource: str  # prometheus | elasticsearch | jaeger
    target: dict[str, Any]  # the target with variables substituted

    @property
    def name(self) -> str:
        return f"{self.dashboard} #{self.panel_id} {self.panel_title!r} {self.ref_id}"


@dataclass(frozen=True)
class QueryResult:
    """What one target returned. ``items`` counts what a panel would draw: series with at least one
    number (a series that is NaN throughout, e.g. 0/0 for a service without traffic, draws nothing,
    so it is not data), documents, buckets holding documents, traces or edges."""

    query: PanelQuery
    items: int
    error: str | None = None
    exemplars: int | None = None  # Prometheus targets with exemplars on
    nan_series: int = 0  # Prometheus series returned with no number in the whole range
    #: What the backend answered, for drawing: Prometheus' ``data`` object (``resultType``,
    #: ``result``), the Elasticsearch ``_search`` response, Jaeger's ``data`` list.
    data: Any = field(default=None, repr=False, compare=False)
    #: Prometheus ``/api/v1/query_exemplars`` ``data`` (series with their exemplars), when asked for.
    exemplar_data: list[dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def has_data(self) -> bool:
        return self.error is None and self.items > 0


def _seconds(duration: str) -> int:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", duration)
    if not match:
        raise ValueError(f"not a duration: {duration!r}")
    return max(1, int(int(match.group(1)) * units[match.group(2)]))


# --- variables --------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_]\w*)(?::([^}]*))?\}|\[\[([A-Za-z_]\w*)\]\]|\$([A-Za-z_]\w*)")
_REGEX_SPECIAL = re.compile(r"([\\^$.|?*+()\[\]{}])")
_LUCENE_SPECIAL = re.compile(r'([+\-=&|><!(){}\[\]^"~*?:\\/ ])')


def _format(value: VariableValue, datasource: str, *, is_all: bool, multi: bool) -> str:
    """Grafana's default interpolation per datasource: regex for Prometheus, Lucene for Elasticsearch."""
    if is_all:
        return value if isinstance(value, str) else "|".join(value)
    values = [value] if isinstance(value, str) else list(value)
    if datasource == "prometheus":
        escaped = [_REGEX_SPECIAL.sub(r"\\\\\1", v) if multi else v for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if datasource == "elasticsearch":
        if len(values) == 1:
            return _LUCENE_SPECIAL.sub(r"\\\1", values[0])
        return "(" + " OR ".join(f'"{v}"' for v in values) + ")"
    return values[0] if len(values) == 1 else ",".join(values)


@dataclass(frozen=True)
class _Resolved:
    value: VariableValue
    is_all: bool
    multi: bool


def interpolate(text: str, variables: Mapping[str, _Resolved], builtins: Mapping[str, str], datasource: str) -> str:
    """Replace ``$x``, ``${x}``, ``${x:fmt}`` and ``[[x]]`` as Grafana would; unknown names stay."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3) or match.group(4)
        if name in builtins:
            return builtins[name]
        if name in variables:
            v = variables[name]
            fmt = match.group(2)
            if fmt == "raw":
                return v.value if isinstance(v.value, str) else ",".join(v.value)
            return _format(v.value, datasource, is_all=v.is_all, multi=v.multi)
        return match.group(0)

    return _VAR.sub(replace, text)


def _interpolate_target(target: Any, variables: Mapping[str, _Resolved], builtins: Mapping[str, str], ds: str) -> Any:
    if isinstance(target, str):
        return interpolate(target, variables, builtins, ds)
    if isinstance(target, list):
        return [_interpolate_target(t, variables, builtins, ds) for t in target]
    if isinstance(target, dict):
        return {k: _interpolate_target(v, variables, builtins, ds) for k, v in target.items()}
    return target


def resolve_variables(
    model: dict[str, Any],
    backends: Backends,
    time_range: TimeRange,
    pinned: Mapping[str, VariableValue] | None = None,
) -> dict[str, _Resolved]:
    """Values for the dashboard's variables, in order: pinned, else "All", else the first option."""
    pinned = pinned or {}
    resolved: dict[str, _Resolved] = {}
    builtins = time_range.builtins()
    for variable in model.get("templating", {}).get("list", []):
        name = variable["name"]
        multi = bool(variable.get("multi") or variable.get("includeAll"))
        if name in pinned:
            resolved[name] = _Resolved(pinned[name], False, multi)
            continue
        if variable.get("includeAll") and variable.get("allValue"):
            resolved[name] = _Resolved(variable["allValue"], True, multi)
            continue
        options = _variable_options(variable, resolved, builtins, backends, time_range)
        if not options:
            raise LookupError(f"{model.get('uid')}: variable ${name} has no values (its query returned nothing)")
        resolved[name] = _Resolved(options[0], False, multi)
    return resolved


def _variable_options(
    variable: dict[str, Any],
    resolved: Mapping[str, _Resolved],
    builtins: Mapping[str, str],
    backends: Backends,
    time_range: TimeRange,
) -> list[str]:
    if variable.get("type") == "custom":
        return [o.strip() for o in str(variable.get("query", "")).split(",") if o.strip()]
    ds = (variable.get("datasource") or {}).get("type")
    query = variable.get("query", "")
    query = query if isinstance(query, str) else query.get("query", "")
    if ds == "prometheus":
        query = interpolate(query, resolved, builtins, "prometheus")
        values = _prometheus_label_values(query, backends, time_range)
    elif ds == "elasticsearch":
        values = _elasticsearch_terms(query, backends, time_range)
    else:
        raise ValueError(f"variable ${variable.get('name')}: unsupported datasource {ds!r}")
    regex = variable.get("regex") or ""
    if regex:
        pattern = re.compile(regex.strip("/"))
        matched = []
        for value in values:
            m = pattern.search(value)
            if m:
                matched.append(m.group(1) if m.groups() else value)
        values = matched
    return sorted(dict.fromkeys(values))


def _prometheus_label_values(query: str, backends: Backends, time_range: TimeRange) -> list[str]:
    match = re.fullmatch(r"\s*label_values\((?:(.*),\s*)?([A-Za-z_]\w*)\)\s*", query)
    if not match:
        raise ValueError(f"unsupported Prometheus variable query {query!r} (only label_values(...))")
    selector, label = match.group(1), match.group(2)
    params: dict[str, Any] = {"start": time_range.start, "end": time_range.end}
    if selector:
        params["match[]"] = selector
    data = _get(f"{_need(backends.prometheus, 'prometheus')}/api/v1/label/{label}/values", params, backends)
    return list(data["data"])


def _elasticsearch_terms(query: str, backends: Backends, time_range: TimeRange) -> list[str]:
    spec = json.loads(query)
    if spec.get("find") != "terms":
        raise ValueError(f"unsupported Elasticsearch variable query {query!r} (only find: terms)")
    body = {
        "size": 0,
        "query": {"bool": {"filter": [_es_time_filter(time_range)]}},
        "aggs": {"values": {"terms": {"field": spec["field"], "size": int(spec.get("size", 500))}}},
    }
    data = _post(f"{_need(backends.elasticsearch, 'elasticsearch')}/{LOG_INDEX}/_search", body, backends)
    return [str(b["key"]) for b in data["aggregations"]["values"]["buckets"]]


# --- extraction ---------------------------------------------------------------------------------


def extract_queries(
    model: dict[str, Any], variables: Mapping[str, _Resolved], time_range: TimeRange
) -> list[PanelQuery]:
    """Every target of every panel (rows' children included), variables filled in."""
    builtins = time_range.builtins()
    out = []
    for panel in model.get("panels", []):
        for p in [panel, *panel.get("panels", [])]:
            if p.get("type") == "row":
                continue
            ds_default = (p.get("datasource") or {}).get("type", "")
            for target in p.get("targets") or []:
                ds = (target.get("datasource") or {}).get("type") or ds_default
                out.append(
                    PanelQuery(
                        dashboard=model.get("uid", "?"),
                        panel_id=p.get("id", 0),
                        panel_title=p.get("title", ""),
                        panel_type=p.get("type", ""),
                        ref_id=target.get("refId", ""),
                        datasource=ds,
                        target=_interpolate_target(target, variables, builtins, ds),
                    )
                )
    return out


# --- running ------------------------------------------------------------------------------------


def _need(url: str | None, what: str) -> str:
    if not url:
        raise ValueError(f"no {what} URL given (Backends({what}=...))")
    return url.rstrip("/")


def _get(url: str, params: Mapping[str, Any], backends: Backends) -> Any:
    response = httpx.get(url, params=params, timeout=backends.timeout)
    if response.status_code >= 400:
        raise RuntimeError(f"HTTP {response.status_code} from {url}: {response.text[:300]}")
    return response.json()


def _post(url: str, body: Any, backends: Backends) -> Any:
    response = httpx.post(url, json=body, timeout=backends.timeout)
    if response.status_code >= 400:
        raise RuntimeError(f"HTTP {response.status_code} from {url}: {response.text[:300]}")
    return response.json()


def _es_time_filter(time_range: TimeRange) -> dict[str, Any]:
    return {
        "range": {
            "@timestamp": {
                "gte": int(time_range.start * 1000),
                "lte": int(time_range.end * 1000),
                "format": "epoch_millis",
            }
        }
    }


def es_search_body(target: dict[str, Any], time_range: TimeRange) -> dict[str, Any]:
    """The ``_search`` body Grafana's Elasticsearch datasource builds for a target (the subset meshwatch uses).

    Supported: a Lucene ``query``; metrics ``count``, ``logs``, ``raw_data``; bucket aggregations
    ``terms`` and ``date_histogram``, nested in order. Anything else raises ValueError.
    """
    lucene = target.get("query") or "*"
    body: dict[str, Any] = {
        "query": {
            "bool": {
                "filter": [
                    _es_time_filter(time_range),
                    {"query_string": {"query": lucene, "analyze_wildcard": True}},
                ]
            }
        }
    }
    metrics = target.get("metrics") or [{"type": "count"}]
    kinds = {m.get("type") for m in metrics}
    if kinds & {"logs", "raw_data"}:
        metric = metrics[0]
        size = (metric.get("settings") or {}).get("limit") or (metric.get("settings") or {}).get("size") or 500
        body["size"] = int(size)
        body["sort"] = [{target.get("timeField", "@timestamp"): {"order": "desc", "unmapped_type": "boolean"}}]
        return body
    unsupported = kinds - {"count"}
    if unsupported:
        raise ValueError(f"unsupported Elasticsearch metric(s) {sorted(unsupported)}")
    body["size"] = 0
    aggs: dict[str, Any] = {}
    cursor = aggs
    for agg in target.get("bucketAggs") or []:
        settings = agg.get("settings") or {}
        if agg["type"] == "terms":
            spec: dict[str, Any] = {
                "terms": {
                    "field": agg["field"],
                    "size": int(settings.get("size", 10)),
                    "min_doc_count": int(settings.get("min_doc_count", 1)),
                    "order": {"_count": "desc"},
                }
            }
        elif agg["type"] == "date_histogram":
            interval = settings.get("interval", "auto")
            if interval == "auto":
                interval = f"{max(1, time_range.seconds // 100)}s"
            spec = {
                "date_histogram": {
                    "field": agg.get("field", "@timestamp"),
                    "fixed_interval": interval,
                    "min_doc_count": int(settings.get("min_doc_count", 0)),
                    "extended_bounds": {"min": int(time_range.start * 1000), "max": int(time_range.end * 1000)},
                    "format": "epoch_millis",
                }
            }
        else:
            raise ValueError(f"unsupported Elasticsearch bucket aggregation {agg['type']!r}")
        cursor[agg["id"]] = spec
        cursor = spec.setdefault("aggs", {})
    if aggs:
        body["aggs"] = aggs
    return body


def _count_es(result: dict[str, Any], target: dict[str, Any]) -> int:
    if not target.get("bucketAggs"):
        return len(result["hits"]["hits"]) if result["hits"].get("hits") else 0
    # Count leaf buckets that hold documents.
    first = (target.get("bucketAggs") or [])[0]["id"]

    def leaves(node: dict[str, Any]) -> int:
        buckets = node.get("buckets", [])
        total = 0
        for bucket in buckets:
            children = [v for k, v in bucket.items() if isinstance(v, dict) and "buckets" in v]
            total += sum(leaves(c) for c in children) if children else int(bucket.get("doc_count", 0) > 0)
        return total

    return leaves(result["aggregations"][first])


def run_query(query: PanelQuery, backends: Backends, time_range: TimeRange) -> QueryResult:
    """Run one query as its datasource would; errors are reported in the result, not raised."""
    try:
        target = query.target
        if query.datasource == "prometheus":
            return _run_prometheus(query, backends, time_range)
        if query.datasource == "elasticsearch":
            body = es_search_body(target, time_range)
            url = f"{_need(backends.elasticsearch, 'elasticsearch')}/{LOG_INDEX}/_search"
            answer = _post(url, body, backends)
            return QueryResult(query, _count_es(answer, target), data=answer)
        if query.datasource == "jaeger":
            base = _need(backends.jaeger, "jaeger")
            if target.get("queryType") == "dependencyGraph":
                params = {"endTs": int(time_range.end * 1000), "lookback": time_range.seconds * 1000}
                found = _get(f"{base}/api/dependencies", params, backends)["data"] or []
                return QueryResult(query, len(found), data=found)
            if target.get("queryType", "search") == "search":
                params = {
                    "service": target.get("service", ""),
                    "limit": target.get("limit", 20),
                    "start": int(time_range.start * 1_000_000),
                    "end": int(time_range.end * 1_000_000),
                }
                if target.get("operation"):
                    params["operation"] = target["operation"]
                found = _get(f"{base}/api/traces", params, backends)["data"] or []
                return QueryResult(query, len(found), data=found)
            raise ValueError(f"unsupported Jaeger queryType {target.get('queryType')!r}")
        raise ValueError(f"unsupported datasource type {query.datasource!r}")
    except Exception as exc:  # one broken query must not hide the others' results
        return QueryResult(query, 0, error=f"{type(exc).__name__}: {exc}")


def _run_prometheus(query: PanelQuery, backends: Backends, time_range: TimeRange) -> QueryResult:
    base = _need(backends.prometheus, "prometheus")
    target = query.target
    expr = target["expr"]
    leftover = variable_names(expr) - BUILTIN_VARIABLES
    if leftover:
        raise ValueError(f"variables left unresolved in {expr!r}: {sorted(leftover)}")
    if target.get("instant"):
        data = _get(f"{base}/api/v1/query", {"query": expr, "time": time_range.end}, backends)
    else:
        params = {"query": expr, "start": time_range.start, "end": time_range.end, "step": time_range.query_step}
        data = _get(f"{base}/api/v1/query_range", params, backends)
    if data.get("status") != "success":
        raise RuntimeError(f"Prometheus: {data.get('error')}")
    series = data["data"]["result"]
    items = sum(1 for s in series if _has_number(s))
    exemplars = None
    found = None
    if target.get("exemplar"):
        params = {"query": expr, "start": time_range.start, "end": time_range.end}
        found = _get(f"{base}/api/v1/query_exemplars", params, backends).get("data") or []
        exemplars = sum(len(s.get("exemplars", [])) for s in found)
    return QueryResult(
        query,
        items,
        exemplars=exemplars,
        nan_series=len(series) - items,
        data=data["data"],
        exemplar_data=found,
    )


def _has_number(series: dict[str, Any]) -> bool:
    """Whether a result series has a finite sample (NaN and ±Inf draw nothing) or a native histogram."""
    if series.get("histogram") or series.get("histograms"):
        return True
    samples = series.get("values") or ([series["value"]] if "value" in series else [])
    return any(math.isfinite(float(value)) for _, value in samples)


@dataclass(frozen=True)
class DashboardRun:
    """One dashboard's queries run: the variable values used, and one result per target."""

    model: dict[str, Any] = field(repr=False)
    variables: dict[str, VariableValue]
    results: list[QueryResult]


def run_dashboard(
    model: dict[str, Any],
    backends: Backends,
    *,
    variables: Mapping[str, VariableValue] | None = None,
    time_range: TimeRange | None = None,
) -> DashboardRun:
    """Resolve the variables of one dashboard and run every query of every panel.

    A variable that cannot be resolved is one failed result (panel id 0, "(variables)").
    """
    time_range = time_range or TimeRange()
    try:
        resolved = resolve_variables(model, backends, time_range, variables)
    except Exception as exc:
        stub = PanelQuery(model.get("uid", "?"), 0, "(variables)", "", "", "", {})
        return DashboardRun(model, {}, [QueryResult(stub, 0, error=f"{type(exc).__name__}: {exc}")])
    results = [run_query(q, backends, time_range) for q in extract_queries(model, resolved, time_range)]
    chosen = {name: ("All" if v.is_all else v.value) for name, v in resolved.items()}
    return DashboardRun(model, chosen, results)


def run_dashboards(
    models: Iterable[dict[str, Any]] | Mapping[str, dict[str, Any]],
    backends: Backends,
    *,
    variables: Mapping[str, VariableValue] | None = None,
    time_range: TimeRange | None = None,
) -> list[QueryResult]:
    """Resolve variables, extract and run every query of every dashboard; one result per target."""
    time_range = time_range or TimeRange()
    items = models.values() if isinstance(models, Mapping) else models
    results: list[QueryResult] = []
    for model in items:
        results += run_dashboard(model, backends, variables=variables, time_range=time_range).results
    return results
