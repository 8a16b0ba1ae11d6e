"""Live: the query runner runs real panels against the real Prometheus, Elasticsearch and Jaeger.

Real series and documents in the contract's shape go in (a prometheus-client endpoint with
HTTP server metrics and target_info; log documents in a meshwatch-logs-* index; spans over
OTLP to Jaeger from two services); the runner must report data for exactly the panels those
feed and empty for the others (CPU, spanmetrics, … which only the demo mesh produces). The
dashboards are pinned to this test's own service: the shared Prometheus may also hold the
demo's series, when tests/demo ran earlier in the session. The "every panel returns data under
load" test of the demo (tests/demo/test_dashboards_live.py) calls the same function. What the
runner brings back is then drawn (``meshwatch-dashboards render-png``) and must show those series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from meshwatch.dashboards import build
from meshwatch.dashboards.queries import Backends, TimeRange, run_dashboards
from meshwatch.dashboards.render import dashboard_figure
from meshwatch.stack.testing import eventually, index_log_records

pytestmark = pytest.mark.integration

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
SERVICE = "dashsvc"
MODELS = build.load_committed()


def _titles_with_data(results: list[Any], dashboard: str) -> dict[str, bool]:
    """Panel title → whether every one of its queries returned data."""
    out: dict[str, bool] = {}
    for r in results:
        if r.query.dashboard == f"meshwatch-{dashboard}":
            assert r.error is None, f"{r.query.name}: {r.error}"
            out[r.query.panel_title] = out.get(r.query.panel_title, True) and r.has_data
    return out


@pytest.fixture
def http_metrics(prometheus: Any) -> Iterator[None]:
    registry = CollectorRegistry()
    histogram = Histogram(
        "http_server_request_duration_seconds",
        "Duration of HTTP server requests.",
        ("http_request_method", "http_route", "http_response_status_code", "url_scheme"),
        buckets=BUCKETS,
        registry=registry,
    )
    Gauge("target_info", "Target metadata", ("deployment_environment_name",), registry=registry).labels("dashtest").set(
        1
    )
    stop = threading.Event()

    def traffic() -> None:
        while not stop.wait(0.1):
            for route, status, seconds in (("/pay", "200", 0.02), ("/pay", "500", 0.3), ("/items", "200", 0.004)):
                histogram.labels("GET", route, status, "http").observe(seconds)

    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    prometheus.add_scrape_target("dash-live", f"127.0.0.1:{server.server_address[1]}", {"job": f"shop/{SERVICE}"})
    try:
        eventually(
            lambda: _prom(prometheus, f'rate(http_server_request_duration_seconds_count{{job="shop/{SERVICE}"}}[1m])'),
            timeout=60,
            what="the test service's request rate in Prometheus",
        )
        yield
    finally:
        prometheus.remove_scrape_target("dash-live")
        stop.set()
        worker.join(timeout=5)
        server.shutdown()
        server.server_close()


def _prom(prometheus: Any, expr: str) -> list[Any]:
    response = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=10)
    return response.json()["data"]["result"]


def test_service_overview_and_endpoint_detail_on_live_prometheus_and_jaeger(
    prometheus: Any, jaeger: Any, http_metrics: None
) -> None:
    # Two services' spans, gateway → dashsvc, so Jaeger has traces and a dependency to show.
    providers = []
    for name in ("dashgateway", SERVICE):
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=jaeger.urls["otlp_grpc"], insecure=True))
        )
        providers.append(provider)
    client, server = (p.get_tracer("dash-test") for p in providers)
    with client.start_as_current_span("GET /checkout", kind=trace.SpanKind.CLIENT) as parent:
        child = server.start_span("GET /pay", context=trace.set_span_in_context(parent), kind=trace.SpanKind.SERVER)
        child.end()
    for provider in providers:
        provider.shutdown()
    eventually(
        lambda: httpx.get(f"{jaeger.url}/api/traces", params={"service": SERVICE, "limit": 5}).json()["data"],
        timeout=30,
        what="the test trace in Jaeger",
    )

    backends = Backends(prometheus=prometheus.url, jaeger=jaeger.url)
    time_range = TimeRange(end=time.time(), seconds=600, rate_interval="30s")
    # Service overview and endpoint detail with the service pinned to this test's.
    overview = run_dashboards(
        [MODELS["service-overview"]], backends, variables={"service": SERVICE}, time_range=time_range
    )
    detail = run_dashboards(
        [MODELS["endpoint-detail"]], backends, variables={"service": SERVICE}, time_range=time_range
    )
    assert _titles_with_data(overview, "service-overview") == {
        "Request rate": True,
        "Error %": True,
        "Latency p50 / p95 / p99": True,
        "Responses by status code": True,
        "Telemetry dropped in the SDK": True,  # `or vector(0)`: no drops reads 0, not "no data"
        # Only the demo mesh (instrumentation, collector spanmetrics) produces these:
        "Error % from traces": False,
        "In-flight requests": False,
        "CPU": False,
        "Memory": False,
        "Outgoing call latency p95": False,
    }
    exemplar_counts = [r.exemplars for r in overview if r.query.panel_title == "Latency p50 / p95 / p99"]
    assert all(isinstance(n, int) for n in exemplar_counts)  # asked for, as Grafana does
    # Drawn from those results (render-png), the panels show the test service's own series.
    _, rendered = dashboard_figure(MODELS["service-overview"], overview, time_range=time_range)
    assert rendered.drawn["Request rate"] == 1
    assert rendered.drawn["Latency p50 / p95 / p99"] == 3  # one series per percentile
    assert not rendered.errors
    assert "CPU" in rendered.empty  # only the demo mesh reports it
    assert _titles_with_data(detail, "endpoint-detail") == {
        "Latency heatmap": True,
        "Latency percentiles by route": True,
        "Top slow routes (p95 over the time range)": True,
        "Top failing routes (5xx share over the time range)": True,
        "Request rate by route": True,
        "Server spans per second by span name": False,
        "Traces of the service": True,
    }
    graph = run_dashboards([MODELS["service-dependencies"]], backends, time_range=time_range)
    panels = _titles_with_data(graph, "service-dependencies")  # every query runs without an error
    assert panels.pop("Dependencies recorded by Jaeger") is True  # dashgateway → dashsvc
    # The servicegraph panels (no variables to pin) show data only where a collector's servicegraph
    # connector ran: the demo's, whose data tests/demo/test_dashboards_live.py checks.
    assert set(panels) == {
        "Service graph",
        "Requests per edge",
        "Error % per edge",
        "Latency p95 per edge (server side)",
        "Latency p95 per edge (client side)",
    }


def test_logs_dashboard_on_live_elasticsearch(elasticsearch: Any) -> None:
    now = datetime.now(UTC)
    docs = [
        {
            "@timestamp": now.isoformat(),
            "message": f"dash test record {i}",
            "log.level": level,
            "service.name": "dash-logs-svc",
            "trace.id": f"{i:032x}",
        }
        for i, level in enumerate(["info", "info", "warn", "error", "error"])
    ]
    index_log_records(elasticsearch, "dashtest", docs)

    backends = Backends(elasticsearch=elasticsearch.url)
    time_range = TimeRange(end=time.time() + 60, seconds=900)
    # Pinned to this test's service: the Lucene value is escaped (dash\-logs\-svc) as Grafana does.
    results = run_dashboards([MODELS["logs"]], backends, variables={"service": "dash-logs-svc"}, time_range=time_range)
    assert _titles_with_data(results, "logs") == {
        "Log volume by level": True,
        "Log volume by service": True,
        "Latest error logs": True,
        "Logs": True,
    }
    by_title = {r.query.panel_title: r.items for r in results}
    assert by_title["Latest error logs"] == 2  # the two error records, not the others
    assert by_title["Logs"] == 5
    _, rendered = dashboard_figure(MODELS["logs"], results, time_range=time_range)
    assert rendered.drawn["Latest error logs"] == 2  # table rows
    assert rendered.drawn["Logs"] == 5  # log lines
    assert rendered.drawn["Log volume by level"] == 3  # info, warn, error
    assert by_title["Log volume by level"] >= 3  # info, warn, error buckets
    # A service with no logs gives empty panels, which the runner reports.
    nothing = run_dashboards([MODELS["logs"]], backends, variables={"service": "no-such-svc"}, time_range=time_range)
    assert not any(r.has_data for r in nothing)
