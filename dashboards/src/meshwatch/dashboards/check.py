"""Static checks of dashboard models: what Grafana would show as a broken panel, found without Grafana.

Each check returns readable problems ("<dashboard> panel 3 'Error %': …") rather than raising,
so ``meshwatch-dashboards check`` lists them all at once.

* every panel and target names a datasource whose uid the provisioning defines;
* every ``$variable`` a query uses is defined by the dashboard (or is a Grafana built-in), and
  variables only use variables defined before them;
* panel ids and target refIds are unique, grid positions fit the 24-column grid without overlap;
* dashboard uids and titles are unique;
* every Prometheus metric name is one of docs/telemetry-contract.md or a meshwatch recording rule,
  and every Elasticsearch field one of the contract's log fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .datasources import datasources

__all__ = [
    "BUILTIN_VARIABLES",
    "CONTRACT_LOG_FIELDS",
    "check_all",
    "check_dashboard",
    "promql_metric_names",
    "variable_names",
]

BUILTIN_VARIABLES = {
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__from",
    "__to",
    "__all",
    "__dashboard",
    "__org",
    "__user",
    "timeFilter",
}

#: docs/telemetry-contract.md, "Logs in Elasticsearch".
CONTRACT_LOG_FIELDS = {
    "@timestamp",
    "ecs.version",
    "message",
    "log.level",
    "event.severity",
    "log.logger",
    "service.name",
    "service.namespace",
    "service.version",
    "service.node.name",
    "service.environment",
    "host.name",
    "host.hostname",
    "trace.id",
    "span.id",
    "error.type",
    "error.message",
    "error.stack_trace",
    "attributes",
    "resource",
    "scope.name",
    "scope.version",
}

_VAR = re.compile(r"\$\{([A-Za-z_]\w*)(?::[^}]*)?\}|\[\[([A-Za-z_]\w*)\]\]|\$([A-Za-z_]\w*)")
_PROMQL_WORDS = {
    # aggregations, functions and keywords that look like identifiers
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "stdvar", "group",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "label_replace",
    "label_join", "vector", "scalar", "abs", "round", "clamp_min", "clamp_max", "avg_over_time",
    "max_over_time", "min_over_time", "sum_over_time", "count_over_time", "absent", "time",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "label_values", "query_result", "e", "inf", "nan",
}  # fmt: skip


def variable_names(text: str) -> set[str]:
    """Template variables referenced in ``text`` (``$x``, ``${x}``, ``${x:fmt}``, ``[[x]]``)."""
    return {next(g for g in m.groups() if g) for m in _VAR.finditer(text)}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (best effort, enough for meshwatch's queries)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # template variables
    names = set(re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)", text))
    return {n for n in names if n.lower() not in _PROMQL_WORDS}


#: Panel types whose colour comes from thresholds: with Grafana's default (green, red from 80)
#: a 50 % ratio or 79 dropped items would show green, so each must set its own.
THRESHOLD_COLOURED = frozenset({"stat", "gauge", "bargauge"})


def all_panels(model: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, the children of collapsed rows included."""
    for panel in model.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _query_texts(target: dict[str, Any]) -> list[str]:
    return [str(target[k]) for k in ("expr", "query", "service", "operation") if target.get(k)]


def _variable_query_text(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return query if isinstance(query, str) else str(query.get("query", query))


def _es_fields(target: dict[str, Any]) -> set[str]:
    fields = {b["field"] for b in target.get("bucketAggs", []) if b.get("field")}
    fields |= {m["field"] for m in target.get("metrics", []) if m.get("field")}
    if target.get("timeField"):
        fields.add(target["timeField"])
    # Lucene `field:value` terms
    fields |= set(re.findall(r"(?<![\w.@])([@A-Za-z_][\w.]*):", re.sub(r'"[^"]*"', "", target.get("query", ""))))
    return {f for f in fields if f not in {"_exists_"}}


def _check_variables(model: dict[str, Any], uids: set[str], problems: list[str]) -> set[str]:
    """Variables are defined once, each using only variables defined before it; returns their names."""
    name = model.get("uid", "?")
    defined: set[str] = set()
    for variable in model.get("templating", {}).get("list", []):
        vname = variable.get("name", "")
        if vname in defined:
            problems.append(f"{name}: variable ${vname} is defined twice")
        ds = variable.get("datasource")
        if variable.get("type") == "query" and (not ds or ds.get("uid") not in uids):
            problems.append(f"{name}: variable ${vname} uses datasource {ds!r}, not one the provisioning defines")
        for used in variable_names(_variable_query_text(variable)) - defined - BUILTIN_VARIABLES:
            problems.append(f"{name}: variable ${vname} uses ${used}, which is not defined before it")
        defined.add(vname)

    return defined


def _check_grid(
    where: str, pid: int, grid: dict[str, int], cells: dict[tuple[int, int], int], problems: list[str]
) -> None:
    if not grid or grid.get("x", 0) + grid.get("w", 0) > 24 or grid.get("w", 0) <= 0:
        problems.append(f"{where}: gridPos {grid} does not fit the 24-column grid")
        return
    for x in range(grid["x"], grid["x"] + grid["w"]):
        for y in range(grid["y"], grid["y"] + grid.get("h", 1)):
            if (x, y) in cells:
                problems.append(f"{where}: overlaps panel {cells[(x, y)]}")
                return
            cells[(x, y)] = pid


def check_dashboard(
    model: dict[str, Any],
    *,
    datasource_uids: Iterable[str] | None = None,
    known_metrics: Iterable[str] | None = None,
) -> list[str]:
    """Problems of one dashboard model (empty when it is fine)."""
    uids = set(datasource_uids if datasource_uids is not None else (d["uid"] for d in datasources()))
    types = {d["uid"]: d["type"] for d in datasources()}
    metrics = set(known_metrics) if known_metrics is not None else None
    name = model.get("uid", "?")
    problems: list[str] = []

    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time"):
        if key not in model:
            problems.append(f"{name}: the dashboard has no '{key}'")

    defined = _check_variables(model, uids, problems)
    seen_ids: set[int] = set()
    cells: dict[tuple[int, int], int] = {}
    for panel in all_panels(model):
        pid = panel.get("id")
        where = f"{name} panel {pid} '{panel.get('title', '')}'"
        if pid is None or pid in seen_ids:
            problems.append(f"{where}: panel id missing or not unique")
        seen_ids.add(pid)
        _check_grid(where, pid, panel.get("gridPos") or {}, cells, problems)
        if panel.get("type") == "row":
            continue
        ds = panel.get("datasource") or {}
        if ds.get("uid") not in uids:
            problems.append(f"{where}: datasource uid {ds.get('uid')!r} is not in the provisioning ({sorted(uids)})")
        elif types.get(ds["uid"], ds.get("type")) != ds.get("type"):
            problems.append(f"{where}: datasource {ds['uid']} has type {types[ds['uid']]}, not {ds.get('type')}")
        if panel.get("type") in THRESHOLD_COLOURED and not (
            ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("thresholds") or {}
        ).get("steps"):
            problems.append(
                f"{where}: a {panel['type']} panel needs its own thresholds (Grafana's default is red from 80)"
            )
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{where}: no queries")
        refs = [t.get("refId") for t in targets]
        if any(not r for r in refs) or len(set(refs)) != len(refs):
            problems.append(f"{where}: refIds {refs} must be non-empty and unique")
        for target in targets:
            tds = target.get("datasource") or ds
            if tds.get("uid") not in uids:
                problems.append(f"{where} query {target.get('refId')}: datasource uid {tds.get('uid')!r} unknown")
            for text in _query_texts(target):
                for used in variable_names(text) - defined - BUILTIN_VARIABLES:
                    problems.append(f"{where} query {target.get('refId')}: uses ${used}, which is not defined")
            kind = tds.get("type")
            if kind == "prometheus" and metrics is not None:
                for metric in sorted(promql_metric_names(target.get("expr", "")) - metrics):
                    problems.append(f"{where} query {target.get('refId')}: metric {metric} is not in the contract")
            if kind == "elasticsearch":
                for field_name in sorted(_es_fields(target) - CONTRACT_LOG_FIELDS):
                    problems.append(f"{where} query {target.get('refId')}: field {field_name} is not in the contract")
    return problems


def check_all(
    models: dict[str, dict[str, Any]],
    *,
    datasource_uids: Iterable[str] | None = None,
    known_metrics: Iterable[str] | None = None,
) -> list[str]:
    problems: list[str] = []
    for attr in ("uid", "title"):
        values = [m.get(attr) for m in models.values()]
        for value in {v for v in values if values.count(v) > 1}:
            problems.append(f"dashboard {attr} {value!r} is used by more than one dashboard")
    for model in models.values():
        problems += check_dashboard(model, datasource_uids=datasource_uids, known_metrics=known_metrics)
    return problems
