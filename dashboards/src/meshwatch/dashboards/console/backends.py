"""What the console's JSON endpoints ask of Prometheus, Jaeger, Elasticsearch and Alertmanager.

Each function takes the console's ``ConsoleConfig`` and plain query parameters, calls one backend
API with httpx (the client the rest of meshwatch.dashboards uses) and returns ``(status, body)``:
the body is what the page draws, the status what the browser sees (a backend's own 4xx passes
through with its message; an unreachable backend is 502 with the URL that failed).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from .. import build
from ..datasources import LOG_INDEX
from ..queries import Backends, TimeRange, _Resolved, _seconds, _variable_options, run_dashboard

__all__ = [
    "ConsoleConfig",
    "DEFAULT_BACKENDS",
    "alerts",
    "dashboard_panels",
    "dashboard_variables",
    "dashboards",
    "logs_search",
    "prom_query",
    "prom_query_range",
    "trace",
    "traces_operations",
    "traces_search",
    "traces_services",
]

#: Where ``meshwatch-stack up`` and ``make demo`` put the backends (stack/src/meshwatch/stack/backends.py).
DEFAULT_BACKENDS = {
    "prometheus": "http://127.0.0.1:9090",
    "jaeger": "http://127.0.0.1:16686",
    "elasticsearch": "http://127.0.0.1:9200",
    "alertmanager": "http://127.0.0.1:9093",
}

#: The value a drop-down sends for a variable's "All" option (Grafana's own spelling).
ALL = "$__all"

Answer = tuple[int, Any]


@dataclass(frozen=True)
class ConsoleConfig:
    prometheus: str = DEFAULT_BACKENDS["prometheus"]
    jaeger: str = DEFAULT_BACKENDS["jaeger"]
    elasticsearch: str = DEFAULT_BACKENDS["elasticsearch"]
    alertmanager: str = DEFAULT_BACKENDS["alertmanager"]
    timeout: float = 15.0

    @property
    def backends(self) -> Backends:
        return Backends(
            prometheus=self.prometheus, elasticsearch=self.elasticsearch, jaeger=self.jaeger, timeout=self.timeout
        )


class BackendError(Exception):
    """A backend answered with an error or could not be reached: ``status`` is what the browser gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _call(method: str, url: str, config: ConsoleConfig, **kwargs: Any) -> httpx.Response:
    try:
        return httpx.request(method, url, timeout=config.timeout, **kwargs)
    except httpx.HTTPError as exc:
        raise BackendError(502, f"{url.split('?', maxsplit=1)[0]} unreachable: {type(exc).__name__}: {exc}") from None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise BackendError(502, f"{response.request.url} answered non-JSON: {response.text[:200]!r}") from None


# --- dashboards -------------------------------------------------------------------------------------


def dashboards() -> Answer:
    """The committed dashboards/json/*.json, unchanged, by file stem."""
    models = build.load_committed()
    return 200, [{"name": name, "uid": m.get("uid"), "title": m.get("title"), "model": m} for name, m in models.items()]


def _model(name: str) -> dict[str, Any]:
    models = build.load_committed()
    if name not in models:
        raise BackendError(404, f"no dashboard {name!r}; have {sorted(models)}")
    return models[name]


def _time_range(params: Mapping[str, str]) -> TimeRange:
    try:
        seconds = _seconds(params.get("range", "1h"))
        end = float(params["end"]) if params.get("end") else time.time()
    except ValueError as exc:
        raise BackendError(400, str(exc)) from None
    return TimeRange(end=end, seconds=seconds, rate_interval=params.get("rate_interval", "1m"))


def _pins(params: Mapping[str, str]) -> dict[str, str]:
    """``var-NAME=VALUE`` query parameters (Grafana's URL spelling); "All" is no pin."""
    return {k[4:]: v for k, v in params.items() if k.startswith("var-") and v not in (ALL, "All", "")}


def dashboard_variables(name: str, params: Mapping[str, str], config: ConsoleConfig) -> Answer:
    """Each variable's options (from its own query, in order, earlier choices filled in) and current value."""
    model = _model(name)
    time_range = _time_range(params)
    pins = _pins(params)
    resolved: dict[str, _Resolved] = {}
    out = []
    for variable in model.get("templating", {}).get("list", []):
        var_name = variable["name"]
        include_all = bool(variable.get("includeAll"))
        multi = bool(variable.get("multi") or include_all)
        error = None
        try:
            options = _variable_options(variable, resolved, time_range.builtins(), config.backends, time_range)
        except Exception as exc:  # one variable's failed query: say so on its drop-down
            options, error = [], f"{type(exc).__name__}: {exc}"
        if var_name in pins:
            current = pins[var_name]
        elif include_all:
            current = ALL
        else:
            current = options[0] if options else ""
        if current == ALL and variable.get("allValue"):
            resolved[var_name] = _Resolved(variable["allValue"], True, multi)
        elif current:
            resolved[var_name] = _Resolved(current, False, multi)
        out.append(
            {
                "name": var_name,
                "label": variable.get("label") or var_name,
                "options": options,
                "includeAll": include_all,
                "current": current,
                "error": error,
            }
        )
    return 200, out


def dashboard_panels(name: str, params: Mapping[str, str], config: ConsoleConfig) -> Answer:
    """Every target of every panel run as its datasource would (queries.run_dashboard): Prometheus
    targets through ``/api/v1/query_range`` (``/api/v1/query`` for instant ones), Elasticsearch and
    Jaeger ones through their search APIs; one result per target, with what the backend answered."""
    model = _model(name)
    time_range = _time_range(params)
    run = run_dashboard(model, config.backends, variables=_pins(params), time_range=time_range)
    return 200, {
        "variables": run.variables,
        "start": time_range.start,
        "end": time_range.end,
        "step": time_range.query_step,
        "results": [
            {
                "panel_id": r.query.panel_id,
                "panel_title": r.query.panel_title,
                "ref_id": r.query.ref_id,
                "datasource": r.query.datasource,
                "target": r.query.target,
                "items": r.items,
                "has_data": r.has_data,
                "error": r.error,
                "data": r.data,
                "exemplars": r.exemplar_data,
            }
            for r in run.results
        ],
    }


# --- Prometheus ------------------------------------------------------------------------------------


def _prometheus(path: str, params: Mapping[str, Any], config: ConsoleConfig) -> Answer:
    if not params.get("query"):
        raise BackendError(400, "query is required (a PromQL expression)")
    response = _call("GET", f"{config.prometheus.rstrip('/')}{path}", config, params=dict(params))
    body = _json(response)
    # Prometheus answers bad PromQL with 400 and {"status": "error", "error": ...}: passed through.
    return response.status_code, body


def prom_query(params: Mapping[str, str], config: ConsoleConfig) -> Answer:
    return _prometheus("/api/v1/query", params, config)


def prom_query_range(params: Mapping[str, str], config: ConsoleConfig) -> Answer:
    query = dict(params)
    if "start" not in query or "end" not in query:
        time_range = _time_range(params)
        query.setdefault("start", str(time_range.start))
        query.setdefault("end", str(time_range.end))
        query.setdefault("step", str(time_range.query_step))
        query.pop("range", None)
    query.setdefault("step", "15")
    return _prometheus("/api/v1/query_range", query, config)


# --- Jaeger ------------------------------------------------------------------------------------------


def _jaeger(path: str, params: Mapping[str, Any], config: ConsoleConfig) -> Any:
    url = f"{config.jaeger.rstrip('/')}{path}"
    response = _call("GET", url, config, params=dict(params))
    body = _json(response)
    if response.status_code >= 400:
        errors = body.get("errors") if isinstance(body, dict) else None
        message = "; ".join(e.get("msg", "") for e in errors or []) or response.text[:200]
        raise BackendError(response.status_code, f"Jaeger {path}: {message}")
    return body.get("data") or []


def traces_services(config: ConsoleConfig) -> Answer:
    return 200, sorted(_jaeger("/api/services", {}, config))


def traces_operations(params: Mapping[str, str], config: ConsoleConfig) -> Answer:
    service = params.get("service", "")
    if not service:
        raise BackendError(400, "service is required")
    return 200, sorted(_jaeger(f"/api/services/{quote(service, safe='')}/operations", {}, config))


def _summary(trace_json: dict[str, Any]) -> dict[str, Any]:
    spans = trace_json.get("spans", [])
    processes = trace_json.get("processes", {})
    start = min((s["startTime"] for s in spans), default=0)
    end = max((s["startTime"] + s["duration"] for s in spans), default=0)
    ids = {s["spanID"] for s in spans}
    roots = [s for s in spans if not any(r.get("spanID") in ids for r in s.get("references", []))]
    root = min(roots or spans, key=lambda s: s["startTime"]) if spans else {}
    return {
        "traceID": trace_json.get("traceID"),
        "root_service": processes.get(root.get("processID"), {}).get("serviceName", ""),
        "root_operation": root.get("operationName", ""),
        "start_us": start,
        "duration_us": end - start,
        "spans": len(spans),
        "services": sorted({p.get("serviceName", "") for p in processes.values()}),
        "errors": sum(1 for s in spans if _is_error(s)),
    }


def _is_error(span: dict[str, Any]) -> bool:
    for tag in span.get("tags", []):
        if tag.get("key") == "error" and str(tag.get("value")).lower() == "true":
            return True
        if tag.get("key") == "otel.status_code" and tag.get("value") == "ERROR":
            return True
    return False


def traces_search(params: Mapping[str, str], config: ConsoleConfig) -> Answer:
    """Jaeger's ``/api/traces`` search: service (required), operation, minDuration (e.g. 100ms),
    error=true, limit, range (lookback ending now)."""
    service = params.get("service", "")
    if not service:
        raise BackendError(400, "service is required (Jaeger searches one service at a time)")
    time_range = _time_range(params)
    query: dict[str, Any] = {
        "service": service,
        "limit": params.get("limit", "20"),
        "start": int(time_range.start * 1_000_000),
        "end": int(time_range.end * 1_000_000),
    }
    if params.get("operation"):
        query["operation"] = params["operation"]
    if params.get("minDuration"):
        query["minDuration"] = params["minDuration"]
    errors_only = params.get("error") in ("true", "1", "on")
    try:
        limit = max(1, min(int(query["limit"]), 500))
    except ValueError:
        raise BackendError(400, f"limit is not a number: {query['limit']!r}") from None
    if errors_only:
        # Jaeger v2 keeps the span status as a status, not as an ``error`` tag a tag search could
        # match; so the console asks for more traces and keeps those with a failed span.
        query["limit"] = min(limit * 10, 1000)
    found = _jaeger("/api/traces", query, config)
    summaries = sorted((_summary(t) for t in found), key=lambda s: -s["start_us"])
    if errors_only:
        summaries = [s for s in summaries if s["errors"]]
    return 200, summaries[:limit]


def trace(trace_id: str, config: ConsoleConfig) -> Answer:
    """One trace, Jaeger's JSON (spans with tags, logs = span events, references; processes)."""
    if not trace_id or not all(c in "0123456789abcdefABCDEF" for c in trace_id) or len(trace_id) > 32:
        raise BackendError(400, f"not a trace id: {trace_id!r} (up to 32 hex digits)")
    # An exemplar or a log line may name a trace the collector did not keep: say why that is expected.
    missing = (
        f"trace {trace_id} not found in Jaeger ({config.jaeger}); with tail sampling (the demo keeps errors, "
        "requests over 500 ms and 5 % of the rest) a fine request's trace is usually not kept, its metrics and logs are"
    )
    try:
        found = _jaeger(f"/api/traces/{trace_id}", {}, config)
    except BackendError as exc:
        if exc.status == 404:
            raise BackendError(404, missing) from None
        raise
    if not found:
        raise BackendError(404, missing)
    return 200, {"summary": _summary(found[0]), "trace": found[0]}


# --- Elasticsearch ---------------------------------------------------------------------------------


def _lucene_term(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def logs_search(params: Mapping[str, str], config: ConsoleConfig) -> Answer:
    """Log records from meshwatch-logs-*: by service, level, trace id and free text, newest first."""
    time_range = _time_range(params)
    filters: list[dict[str, Any]] = [
        {
            "range": {
                "@timestamp": {
                    "gte": int(time_range.start * 1000),
                    "lte": int(time_range.end * 1000),
                    "format": "epoch_millis",
                }
            }
        }
    ]
    for param, field in (("service", "service.name"), ("level", "log.level"), ("trace_id", "trace.id")):
        if params.get(param):
            value = params[param].lower() if param in ("level", "trace_id") else params[param]
            filters.append({"term": {field: value}})
    if params.get("q"):
        filters.append({"query_string": {"query": params["q"], "default_field": "message", "lenient": True}})
    try:
        size = max(1, min(int(params.get("size", "100")), 1000))
    except ValueError:
        raise BackendError(400, f"size is not a number: {params.get('size')!r}") from None
    body = {
        "size": size,
        "query": {"bool": {"filter": filters}},
        "sort": [{"@timestamp": {"order": "desc", "unmapped_type": "date"}}],
        "track_total_hits": True,
    }
    url = f"{config.elasticsearch.rstrip('/')}/{LOG_INDEX}/_search"
    response = _call("POST", url, config, json=body, params={"ignore_unavailable": "true", "allow_no_indices": "true"})
    answer = _json(response)
    if response.status_code >= 400:
        reason = (answer.get("error") or {}).get("reason") if isinstance(answer, dict) else None
        raise BackendError(response.status_code, f"Elasticsearch: {reason or response.text[:300]}")
    hits = answer.get("hits", {})
    records = []
    for hit in hits.get("hits", []):
        src = hit.get("_source", {})
        records.append(
            {
                "timestamp": src.get("@timestamp"),
                "service": _field(src, "service.name"),
                "level": _field(src, "log.level"),
                "message": src.get("message", ""),
                "trace_id": _field(src, "trace.id"),
                "span_id": _field(src, "span.id"),
                "index": hit.get("_index"),
                "source": src,
            }
        )
    total = hits.get("total", {})
    return 200, {"total": total.get("value", len(records)) if isinstance(total, dict) else total, "records": records}


def _field(src: dict[str, Any], dotted: str) -> Any:
    """A field stored either flat (``"service.name": …``) or nested (``{"service": {"name": …}}``)."""
    if dotted in src:
        return src[dotted]
    node: Any = src
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# --- alerts ----------------------------------------------------------------------------------------


def alerts(config: ConsoleConfig) -> Answer:
    """Firing and pending alerts from Prometheus' rules, and what Alertmanager holds, each with its
    runbook (the ``runbook_url`` annotation). A backend that fails is named in ``errors``."""
    out: dict[str, Any] = {"prometheus": [], "alertmanager": [], "errors": {}}
    try:
        response = _call("GET", f"{config.prometheus.rstrip('/')}/api/v1/alerts", config)
        body = _json(response)
        if response.status_code >= 400:
            raise BackendError(response.status_code, f"Prometheus: {body.get('error', response.text[:200])}")
        exprs = _alert_expressions(config)
        for alert in body.get("data", {}).get("alerts", []):
            labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
            out["prometheus"].append(
                {
                    "name": labels.get("alertname", ""),
                    "state": alert.get("state"),
                    "severity": labels.get("severity", ""),
                    "active_at": alert.get("activeAt"),
                    "value": alert.get("value"),
                    "labels": labels,
                    "annotations": annotations,
                    "runbook_url": annotations.get("runbook_url"),
                    "expr": exprs.get(labels.get("alertname", "")),
                }
            )
    except BackendError as exc:
        out["errors"]["prometheus"] = str(exc)
    try:
        response = _call("GET", f"{config.alertmanager.rstrip('/')}/api/v2/alerts", config)
        body = _json(response)
        if response.status_code >= 400:
            raise BackendError(response.status_code, f"Alertmanager: {response.text[:200]}")
        for alert in body:
            labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
            out["alertmanager"].append(
                {
                    "name": labels.get("alertname", ""),
                    "state": (alert.get("status") or {}).get("state"),
                    "severity": labels.get("severity", ""),
                    "starts_at": alert.get("startsAt"),
                    "receivers": [r.get("name") for r in alert.get("receivers", [])],
                    "labels": labels,
                    "annotations": annotations,
                    "runbook_url": annotations.get("runbook_url"),
                    "generator_url": alert.get("generatorURL"),
                    # Prometheus' link (…/graph?g0.expr=…) has no UI behind it here: the console's
                    # Explore tab opens the same expression.
                    "expr": _generator_expr(alert.get("generatorURL")),
                }
            )
    except BackendError as exc:
        out["errors"]["alertmanager"] = str(exc)
    order = {"firing": 0, "pending": 1}
    out["prometheus"].sort(key=lambda a: (order.get(a["state"], 2), a["name"]))
    return 200, out


def _alert_expressions(config: ConsoleConfig) -> dict[str, str]:
    """Alert name → its rule's PromQL (``/api/v1/rules``); empty when the rules cannot be read."""
    try:
        response = _call("GET", f"{config.prometheus.rstrip('/')}/api/v1/rules", config, params={"type": "alert"})
        groups = _json(response).get("data", {}).get("groups", [])
    except (BackendError, AttributeError):
        return {}
    return {rule["name"]: rule.get("query", "") for group in groups for rule in group.get("rules", [])}


def _generator_expr(url: str | None) -> str | None:
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get("g0.expr")
    return values[0] if values else None
