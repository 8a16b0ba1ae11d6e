"""Live: every JSON endpoint of the console returns what was put into the real backends.

A prometheus-client endpoint scraped by the session's Prometheus, two spans over OTLP to Jaeger
(one with an error status and an event), log records in a meshwatch-logs-* index of this test's
own, two alert rules (one firing, one pending) with runbook annotations. Positive controls: a
misspelt metric gives an empty result, an unknown trace id a 404 with a message, an unreachable
backend a 502 naming it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshwatch.dashboards import build
from meshwatch.dashboards.console import ConsoleConfig, make_server
from meshwatch.stack.testing import eventually

from .conftest import JOB, SERVICE

pytestmark = pytest.mark.integration


def _get(console: Any, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{console.url}{path}", params=params, timeout=30)


def test_page_and_vendored_chart_library_are_served(console: Any) -> None:
    page = _get(console, "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="vendor/uPlot.iife.min.js"' in page.text and 'src="console.js"' in page.text
    uplot = _get(console, "/vendor/uPlot.iife.min.js")
    assert uplot.status_code == 200 and "uPlot" in uplot.text[:2000] and len(uplot.content) > 30_000
    assert _get(console, "/../pyproject.toml").status_code == 404
    assert _get(console, "/api/nothing").json() == {"error": "no API route /api/nothing"}


def test_dashboards_are_the_committed_json(console: Any) -> None:
    answer = _get(console, "/api/dashboards")
    assert answer.status_code == 200
    served = {d["name"]: d["model"] for d in answer.json()}
    assert served == build.load_committed()  # the files as they are, all six
    assert len(served) == 6


def test_dashboard_panels_draw_scraped_series(console: Any, scraped: None, sent_trace: str) -> None:
    # The variables' options come from the live Prometheus: this test's service is one of them.
    variables = _get(console, "/api/dashboards/service-overview/variables", range="15m").json()
    by_name = {v["name"]: v for v in variables}
    assert SERVICE in by_name["service"]["options"], by_name["service"]
    assert by_name["service"]["current"] == "$__all" and by_name["service"]["includeAll"]
    answer = _get(console, "/api/dashboards/service-overview/panels", range="15m", **{"var-service": SERVICE})
    assert answer.status_code == 200
    body = answer.json()
    assert body["variables"]["service"] == SERVICE
    results = body["results"]
    assert {r["datasource"] for r in results} == {"prometheus"}
    assert all(r["error"] is None for r in results), [r["error"] for r in results if r["error"]]
    panels: dict[str, bool] = {}
    for r in results:
        panels[r["panel_title"]] = panels.get(r["panel_title"], True) and r["has_data"]
    # What this test's series feed has data, drawn from query_range (a matrix per target) ...
    assert panels["Request rate"] and panels["Error %"] and panels["Latency p50 / p95 / p99"], panels
    rate = next(r for r in results if r["panel_title"] == "Request rate")
    assert rate["data"]["resultType"] == "matrix" and SERVICE in json.dumps(rate["data"]["result"])
    assert "$service" not in rate["target"]["expr"] and SERVICE in rate["target"]["expr"]

    # Exemplars come with the latency panel (it asks for them, as Grafana does): the sent trace.
    def exemplar_traces() -> set[str]:
        body = _get(console, "/api/dashboards/service-overview/panels", range="15m", **{"var-service": SERVICE}).json()
        latency = [r for r in body["results"] if r["panel_title"] == "Latency p50 / p95 / p99"]
        return {e["labels"]["trace_id"] for r in latency for s in r["exemplars"] or [] for e in s["exemplars"]}

    assert sent_trace in eventually(exemplar_traces, timeout=30, what="the latency panel's exemplars")
    # ... and what only the demo mesh produces (CPU) is empty, which the page marks "No data".
    assert panels["CPU"] is False
    assert _get(console, "/api/dashboards/nope/panels").status_code == 404


def test_explore_query_range_and_instant(console: Any, scraped: None) -> None:
    expr = f'rate(console_test_requests_total{{job="{JOB}"}}[5s])'

    def ranged() -> Any:
        now = time.time()
        answer = _get(console, "/api/prom/query_range", query=expr, start=now - 60, end=now, step=1).json()
        assert answer["status"] == "success" and answer["data"]["resultType"] == "matrix"
        return answer if len(answer["data"]["result"][0]["values"]) >= 3 else None

    (series,) = eventually(ranged, timeout=20, what="three points of the test counter's rate")["data"]["result"]
    assert series["metric"]["route"] == "/pay"
    assert any(float(v) > 0 for _, v in series["values"])
    instant = _get(console, "/api/prom/query", query=expr).json()
    assert float(instant["data"]["result"][0]["value"][1]) > 0
    # With a range and no start/end, the console picks them.
    assert _get(console, "/api/prom/query_range", query=expr, range="5m").json()["data"]["result"]


def test_explore_misspelt_metric_is_empty_and_bad_promql_is_an_error(console: Any, scraped: None) -> None:
    misspelt = _get(console, "/api/prom/query_range", query="console_test_reqests_total", range="5m")
    assert misspelt.status_code == 200
    assert misspelt.json()["data"]["result"] == []  # what the page marks "No data"
    broken = _get(console, "/api/prom/query", query="rate(console_test_requests_total[5s]")
    assert broken.status_code == 400 and "parse error" in broken.json()["error"]
    assert _get(console, "/api/prom/query").status_code == 400  # no query at all


def test_trace_search_and_waterfall(console: Any, sent_trace: str) -> None:
    assert SERVICE in _get(console, "/api/traces/services").json()
    assert {"POST /pay", "charge card"} <= set(_get(console, "/api/traces/operations", service=SERVICE).json())
    found = _get(console, "/api/traces/search", service=SERVICE, range="15m").json()
    ours = [t for t in found if t["traceID"] == sent_trace]
    assert ours and ours[0]["spans"] == 2 and ours[0]["errors"] == 1, found
    assert ours[0]["root_operation"] == "POST /pay" and ours[0]["root_service"] == SERVICE
    errors_only = _get(console, "/api/traces/search", service=SERVICE, range="15m", error="true").json()
    assert sent_trace in {t["traceID"] for t in errors_only}
    slow = _get(console, "/api/traces/search", service=SERVICE, range="15m", minDuration="10s").json()
    assert sent_trace not in {t["traceID"] for t in slow}  # the trace took about 20 ms

    one = _get(console, f"/api/traces/{sent_trace}")
    assert one.status_code == 200
    spans = {s["operationName"]: s for s in one.json()["trace"]["spans"]}
    child = spans["charge card"]
    assert child["references"][0]["spanID"] == spans["POST /pay"]["spanID"]
    assert any(f["value"] == "card declined" for f in child["logs"][0]["fields"])  # the span event
    tags = {t["key"]: t["value"] for t in child["tags"]}
    assert tags["otel.status_code"] == "ERROR" and tags["otel.status_description"] == "declined"


def test_unknown_trace_is_404_with_a_message(console: Any, jaeger: Any) -> None:
    missing = "ab" * 16
    answer = _get(console, f"/api/traces/{missing}")
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error.startswith(f"trace {missing} not found in Jaeger ({jaeger.url}); with tail sampling"), error
    assert "a fine request's trace is usually not kept" in error  # why an exemplar may lead nowhere
    bad = _get(console, "/api/traces/not-hex")
    assert bad.status_code == 400 and "not a trace id" in bad.json()["error"]
    assert _get(console, "/api/traces/search").status_code == 400  # no service


def test_log_search_by_service_level_text_and_trace(console: Any, logged: str, sent_trace: str) -> None:
    everything = _get(console, "/api/logs/search", service=SERVICE, range="15m").json()
    assert everything["total"] == 3
    assert {r["level"] for r in everything["records"]} == {"info", "warn", "error"}
    errors = _get(console, "/api/logs/search", service=SERVICE, level="error", range="15m").json()["records"]
    assert [(r["message"], r["trace_id"]) for r in errors] == [("card declined by issuer", sent_trace)]
    text = _get(console, "/api/logs/search", service=SERVICE, q="retrying", range="15m").json()["records"]
    assert [r["level"] for r in text] == ["warn"]
    by_trace = _get(console, "/api/logs/search", trace_id=sent_trace, range="15m").json()["records"]
    assert [r["message"] for r in by_trace] == ["card declined by issuer"]
    assert _get(console, "/api/logs/search", service="no-such-svc", range="15m").json()["total"] == 0


def test_logs_dashboard_reads_the_records(console: Any, logged: str) -> None:
    body = _get(console, "/api/dashboards/logs/panels", range="15m", **{"var-service": SERVICE}).json()
    items = {r["panel_title"]: r["items"] for r in body["results"]}
    assert items["Latest error logs"] == 1 and items["Logs"] == 3


def test_alerts_firing_and_pending_with_runbooks(console: Any, alert_rules: None) -> None:
    def both() -> Any:
        answer = _get(console, "/api/alerts").json()
        states = {a["name"]: a for a in answer["prometheus"]}
        held = {a["name"]: a for a in answer["alertmanager"]}
        if "ConsoleTestFiring" in states and "ConsoleTestPending" in states and "ConsoleTestFiring" in held:
            return answer, states, held
        return None

    answer, states, held = eventually(both, timeout=30, what="both rules evaluated and the page reached Alertmanager")
    assert answer["errors"] == {}
    assert states["ConsoleTestFiring"]["state"] == "firing"
    assert states["ConsoleTestFiring"]["runbook_url"] == "https://runbooks.test/Firing.md"
    assert states["ConsoleTestFiring"]["expr"] == "vector(1)"  # the page's "graph" link opens it in Explore
    assert held["ConsoleTestFiring"]["expr"] == "vector(1)"  # from Alertmanager's generatorURL
    assert states["ConsoleTestPending"]["state"] == "pending"
    assert states["ConsoleTestPending"]["runbook_url"] == "https://runbooks.test/Pending.md"
    assert held["ConsoleTestFiring"]["state"] == "active"
    assert held["ConsoleTestFiring"]["runbook_url"] == "https://runbooks.test/Firing.md"
    assert "ConsoleTestPending" not in held  # pending alerts are not sent


def test_unreachable_backend_is_named() -> None:
    # A console pointed at a closed port: each endpoint says which backend it could not reach.
    dead = "http://127.0.0.1:9"
    server = make_server(ConsoleConfig(prometheus=dead, jaeger=dead, elasticsearch=dead, alertmanager=dead), port=0)
    server.quiet = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        query = _get(server, "/api/prom/query", query="up")
        assert query.status_code == 502 and "http://127.0.0.1:9/api/v1/query unreachable" in query.json()["error"]
        assert _get(server, "/api/logs/search").status_code == 502
        assert _get(server, "/api/traces/services").status_code == 502
        alerts = _get(server, "/api/alerts").json()
        assert set(alerts["errors"]) == {"prometheus", "alertmanager"}
        panels = _get(server, "/api/dashboards/slo/panels").json()
        assert panels["results"] and all(r["error"] for r in panels["results"])  # each panel says so
    finally:
        server.shutdown()
        server.server_close()


def test_cli_starts_the_console_on_a_free_port(prometheus: Any, jaeger: Any) -> None:
    command = [
        str(Path(sys.executable).with_name("meshwatch-dashboards")),
        "console",
        "--port",
        "0",
        "--quiet",
        "--prometheus",
        prometheus.url,
        "--jaeger",
        jaeger.url,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        assert first.startswith("meshwatch console: http://127.0.0.1:"), first
        url = first.split(": ", 1)[1]
        config = httpx.get(f"{url}/api/config", timeout=10).json()
        assert config["prometheus"] == prometheus.url and config["alertmanager"] == "http://127.0.0.1:9093"
        assert (
            httpx.get(f"{url}/api/prom/query", params={"query": "vector(7)"}, timeout=10).json()["data"]["result"][0][
                "value"
            ][1]
            == "7"
        )
    finally:
        process.terminate()
        process.wait(10)
