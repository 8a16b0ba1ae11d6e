"""The console's pure pieces: URL pins, trace summaries, log fields, alert links, static files."""

from __future__ import annotations

import threading

import httpx

from meshwatch.dashboards.console import ConsoleConfig, make_server
from meshwatch.dashboards.console.backends import _field, _generator_expr, _pins, _summary


def test_all_is_no_pin() -> None:
    params = {"var-service": "orders", "var-environment": "$__all", "var-route": "All", "range": "1h", "x": "1"}
    assert _pins(params) == {"service": "orders"}


def test_trace_summary_finds_the_root_and_counts_failed_spans() -> None:
    trace = {
        "traceID": "t1",
        "processes": {"p1": {"serviceName": "gateway"}, "p2": {"serviceName": "payments"}},
        "spans": [
            {
                "spanID": "b",
                "processID": "p2",
                "operationName": "charge",
                "startTime": 1_000_100,
                "duration": 50,
                "references": [{"refType": "CHILD_OF", "spanID": "a"}],
                "tags": [{"key": "otel.status_code", "value": "ERROR"}],
            },
            {
                "spanID": "a",
                "processID": "p1",
                "operationName": "POST /checkout",
                "startTime": 1_000_000,
                "duration": 400,
                "references": [],
                "tags": [{"key": "error", "value": False}],
            },
        ],
    }
    assert _summary(trace) == {
        "traceID": "t1",
        "root_service": "gateway",
        "root_operation": "POST /checkout",
        "start_us": 1_000_000,
        "duration_us": 400,
        "spans": 2,
        "services": ["gateway", "payments"],
        "errors": 1,
    }


def test_log_fields_flat_or_nested() -> None:
    assert _field({"service.name": "a"}, "service.name") == "a"
    assert _field({"service": {"name": "b"}}, "service.name") == "b"
    assert _field({"service": "c"}, "service.name") is None


def test_generator_url_gives_the_expression() -> None:
    url = "http://vm:9090/graph?g0.expr=sum%28rate%28x%5B5m%5D%29%29+%3E+1&g0.tab=1"
    assert _generator_expr(url) == "sum(rate(x[5m])) > 1"
    assert _generator_expr("http://vm:9090/graph") is None
    assert _generator_expr(None) is None


def test_static_files_and_unknown_routes_without_backends() -> None:
    server = make_server(ConsoleConfig(), port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        js = httpx.get(f"{server.url}/console.js", timeout=5)
        assert js.status_code == 200 and js.headers["content-type"] == "text/javascript; charset=utf-8"
        assert httpx.get(f"{server.url}/vendor/uPlot.min.css", timeout=5).headers["content-type"].startswith("text/css")
        assert httpx.get(f"{server.url}/%2e%2e/server.py", timeout=5).status_code == 404
        missing = httpx.get(f"{server.url}/api/dashboards/nope/variables", timeout=5)
        assert missing.status_code == 404 and "no dashboard 'nope'" in missing.json()["error"]
        # Prometheus' link (an alert's generatorURL under --web.external-url) opens Explore with its query.
        graph = httpx.get(f"{server.url}/graph", params={"g0.expr": 'up{job="a"} == 0', "g0.tab": "1"}, timeout=5)
        assert graph.status_code == 302
        assert graph.headers["location"] == "/#explore?q=up%7Bjob%3D%22a%22%7D%20%3D%3D%200"
        assert httpx.get(f"{server.url}/graph", timeout=5).headers["location"] == "/#explore"
        bad_range = httpx.get(f"{server.url}/api/dashboards/slo/panels", params={"range": "soon"}, timeout=5)
        assert bad_range.status_code == 400 and "not a duration" in bad_range.json()["error"]
    finally:
        server.shutdown()
        server.server_close()
