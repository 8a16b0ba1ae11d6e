"""spanmetrics and servicegraph: aggregation, emitted OTLP, and series queryable in the real Prometheus."""

from __future__ import annotations

import os
import time
import uuid

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from meshwatch.collector.connectors import servicegraph, spanmetrics
from meshwatch.collector.exporters import prometheus as prom
from meshwatch.collector.otlp_values import any_to_python
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry
from meshwatch.stack.testing import eventually

from ._otlp import Sink, batch_of, metric, scrape_with_honor_labels, settings, span, traces

CLIENT, SERVER, PRODUCER, CONSUMER = (
    Span.SPAN_KIND_CLIENT,
    Span.SPAN_KIND_SERVER,
    Span.SPAN_KIND_PRODUCER,
    Span.SPAN_KIND_CONSUMER,
)
RESOURCE = {"service.name": "checkout", "service.namespace": "shop", "service.instance.id": "pod-1", "host.name": "n"}


def points(request, name: str) -> list:
    found = []
    for rm in request.resource_metrics:
        resource = {kv.key: any_to_python(kv.value) for kv in rm.resource.attributes}
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    body = getattr(m, m.WhichOneof("data"))
                    for p in body.data_points:
                        found.append((resource, {kv.key: any_to_python(kv.value) for kv in p.attributes}, p, m))
    return found


def make_spanmetrics(telemetry: Telemetry | None = None, **options) -> spanmetrics.SpanMetricsConnector:
    config = spanmetrics.SpanMetricsConfig.model_validate(options)
    return spanmetrics.factory.create(
        settings("spanmetrics", Signal.TRACES, telemetry=telemetry or Telemetry()), config, {Signal.METRICS: Sink()}
    )


def test_spanmetrics_counts_calls_and_durations_per_series() -> None:
    conn = make_spanmetrics(dimensions=[{"name": "http.route"}, {"name": "http.request.method", "default": "NONE"}])
    spans = [
        span("GET /pay", duration=0.003, attributes={"http.route": "/pay", "http.request.method": "GET"}),
        span("GET /pay", duration=0.3, attributes={"http.route": "/pay", "http.request.method": "GET"}),
        span("GET /pay", duration=0.02, error=True, attributes={"http.route": "/pay", "http.request.method": "GET"}),
        span("query", kind=CLIENT, duration=0.001),
    ]
    conn.consume(batch_of(Signal.TRACES, traces(RESOURCE, spans)))
    conn.consume(batch_of(Signal.TRACES, traces({"no": "service"}, [span()])))  # skipped: no service.name
    request = conn.build()
    calls = points(request, "traces.span.metrics.calls")
    by_key = {(a["span.name"], a["status.code"]): p.as_int for _, a, p, _ in calls}
    assert by_key == {
        ("GET /pay", "STATUS_CODE_UNSET"): 2,
        ("GET /pay", "STATUS_CODE_ERROR"): 1,
        ("query", "STATUS_CODE_UNSET"): 1,
    }
    resource, attrs, _, metric_ = calls[0]
    assert resource == {"service.name": "checkout", "service.namespace": "shop", "service.instance.id": "pod-1"}
    assert attrs == {
        "service.name": "checkout",
        "span.name": "GET /pay",
        "span.kind": "SPAN_KIND_SERVER",
        "status.code": "STATUS_CODE_UNSET",
        "http.route": "/pay",
        "http.request.method": "GET",
    }
    assert metric_.sum.is_monotonic and metric_.sum.aggregation_temporality == 2  # cumulative
    query_attrs = next(a for _, a, _, _ in calls if a["span.name"] == "query")
    assert "http.route" not in query_attrs and query_attrs["http.request.method"] == "NONE"
    durations = points(request, "traces.span.metrics.duration")
    ok = next(p for _, a, p, m in durations if a["status.code"] == "STATUS_CODE_UNSET" and a["span.name"] == "GET /pay")
    assert durations[0][3].unit == "s"
    assert ok.count == 2 and ok.sum == pytest.approx(0.303)
    assert list(ok.explicit_bounds) == list(spanmetrics.DEFAULT_BUCKETS)
    assert ok.bucket_counts[1] == 1  # 3 ms in (2 ms, 4 ms]
    assert ok.bucket_counts[8] == 1  # 300 ms in (200 ms, 400 ms]
    assert len(ok.exemplars) == 2 and len(ok.exemplars[0].trace_id) == 16
    # cumulative: a second build carries the same totals, exemplars only once
    again = points(conn.build(), "traces.span.metrics.duration")
    assert next(p for _, a, p, m in again if a["span.name"] == "query").count == 1
    assert all(not p.exemplars for _, _, p, _ in again)


def test_spanmetrics_cardinality_limit_goes_to_one_overflow_series() -> None:
    conn = make_spanmetrics(aggregation_cardinality_limit=3)
    conn.consume(batch_of(Signal.TRACES, traces(RESOURCE, [span(f"op-{i}") for i in range(10)])))
    calls = points(conn.build(), "traces.span.metrics.calls")
    assert len(calls) == 4
    overflow = [p.as_int for _, a, p, _ in calls if a.get("otel.metric.overflow") == "true"]
    assert overflow == [7]


def test_spanmetrics_flushes_to_the_metrics_pipeline(host, telemetry) -> None:
    sink = Sink()
    config = spanmetrics.SpanMetricsConfig(metrics_flush_interval=0.2)
    conn = spanmetrics.factory.create(settings("spanmetrics", telemetry=telemetry), config, {Signal.METRICS: sink})
    conn.start(host)
    try:
        conn.consume(batch_of(Signal.TRACES, traces(RESOURCE, [span()])))
        eventually(lambda: sink.batches, timeout=10, what="a flush")
        assert sink.batches[0].signal is Signal.METRICS
        assert sink.batches[0].items == 2  # one calls point, one duration point
    finally:
        conn.shutdown(5)


def make_graph(telemetry: Telemetry | None = None, **options) -> servicegraph.ServiceGraphConnector:
    config = servicegraph.ServiceGraphConfig.model_validate(options)
    return servicegraph.factory.create(
        settings("servicegraph", Signal.TRACES, telemetry=telemetry or Telemetry()), config, {Signal.METRICS: Sink()}
    )


def edges(conn) -> dict:
    request = conn.build()
    out = {}
    for _, attrs, point, _ in points(request, "traces_service_graph_request_total"):
        key = (attrs["client"], attrs["server"], attrs["connection_type"])
        out[key] = {"total": point.as_int}
    for _, attrs, point, _ in points(request, "traces_service_graph_request_failed_total"):
        out[(attrs["client"], attrs["server"], attrs["connection_type"])]["failed"] = point.as_int
    for _, attrs, point, _ in points(request, "traces_service_graph_request_server"):
        out[(attrs["client"], attrs["server"], attrs["connection_type"])]["server_sum"] = point.sum
    return out


def test_servicegraph_pairs_client_and_server_spans_across_batches() -> None:
    conn = make_graph(dimensions=["http.request.method"])
    trace_ids = [os.urandom(16) for _ in range(3)]
    clients = [
        span(
            "POST /pay",
            kind=CLIENT,
            trace_id=t,
            duration=0.05,
            error=(i == 0),
            attributes={"http.request.method": "POST"},
        )
        for i, t in enumerate(trace_ids)
    ]
    servers = [span("POST /pay", kind=SERVER, trace_id=c.trace_id, parent=c.span_id, duration=0.04) for c in clients]
    conn.consume(batch_of(Signal.TRACES, traces({"service.name": "frontend"}, clients)))
    assert edges(conn) == {}
    conn.consume(batch_of(Signal.TRACES, traces({"service.name": "payments"}, servers)))
    assert edges(conn) == {("frontend", "payments", ""): {"total": 3, "failed": 1, "server_sum": pytest.approx(0.12)}}
    dims = points(conn.build(), "traces_service_graph_request_total")[0][1]
    assert dims["client_http.request.method"] == "POST" and "server_http.request.method" not in dims


def test_servicegraph_messaging_database_and_virtual_nodes(host, telemetry) -> None:
    conn = make_graph(telemetry, store={"ttl": 1, "max_items": 3})
    conn.start(host)
    conn._flusher.stop(1)  # expiry is driven by hand below
    trace_id = os.urandom(16)
    producer = span("publish", kind=PRODUCER, trace_id=trace_id)
    consumer = span("consume", kind=CONSUMER, trace_id=trace_id, parent=producer.span_id)
    conn.consume(batch_of(Signal.TRACES, traces({"service.name": "orders"}, [producer])))
    conn.consume(batch_of(Signal.TRACES, traces({"service.name": "shipping"}, [consumer])))
    db = span("SELECT", kind=CLIENT, attributes={"db.system": "postgresql", "db.name": "shop"})
    peer = span("GET", kind=CLIENT, attributes={"peer.service": "stripe"})
    lonely = span("GET", kind=CLIENT)  # no server, no peer attribute: expires unmatched
    root = span("GET /", kind=SERVER)  # a root server span: the client is the user
    conn.consume(batch_of(Signal.TRACES, traces({"service.name": "orders"}, [db, peer, lonely, root])))
    assert conn.expire(now=time.monotonic() + 5) == 1
    assert edges(conn) == {
        ("orders", "shipping", "messaging_system"): {"total": 1, "failed": 0, "server_sum": pytest.approx(0.01)},
        ("orders", "shop", "database"): {"total": 1, "failed": 0, "server_sum": pytest.approx(0.01)},
        ("orders", "stripe", "virtual_node"): {"total": 1, "failed": 0, "server_sum": pytest.approx(0.01)},
        ("user", "orders", "virtual_node"): {"total": 1, "failed": 0, "server_sum": pytest.approx(0.01)},
    }
    assert metric(telemetry, "meshwatch_connector_servicegraph_expired_edges_total", connector="servicegraph") == 1
    # max_items: a full store refuses new halves, and says so
    conn.consume(batch_of(Signal.TRACES, traces({"service.name": "a"}, [span(kind=CLIENT) for _ in range(5)])))
    assert metric(telemetry, "meshwatch_connector_servicegraph_dropped_spans_total", connector="servicegraph") == 2


# --- through the Prometheus exporter into the real Prometheus ---------------------------------


@pytest.mark.integration
def test_spanmetrics_and_service_graph_series_are_queryable_in_prometheus(prometheus, host, telemetry) -> None:
    exporter = prom.factory.create(
        settings("prometheus", telemetry=telemetry), prom.PrometheusConfig(endpoint="127.0.0.1:0")
    )
    exporter.start(host)
    fast = {"metrics_flush_interval": 0.5}
    span_conn = spanmetrics.factory.create(
        settings("spanmetrics", telemetry=telemetry),
        spanmetrics.SpanMetricsConfig.model_validate({**fast, "dimensions": [{"name": "http.route"}]}),
        {Signal.METRICS: exporter},
    )
    graph = servicegraph.factory.create(
        settings("servicegraph", telemetry=telemetry),
        servicegraph.ServiceGraphConfig.model_validate(fast),
        {Signal.METRICS: exporter},
    )
    for component in (span_conn, graph):
        component.start(host)
    front, back = f"front-{uuid.uuid4().hex[:6]}", f"back-{uuid.uuid4().hex[:6]}"
    target = scrape_with_honor_labels(prometheus, f"127.0.0.1:{exporter.port}")
    try:
        clients, servers = [], []
        for i in range(5):
            client = span("GET /api", kind=CLIENT, duration=0.05, error=(i == 0))
            clients.append(client)
            servers.append(
                span(
                    "GET /api",
                    kind=SERVER,
                    trace_id=client.trace_id,
                    parent=client.span_id,
                    duration=0.04,
                    attributes={"http.route": "/api"},
                )
            )
        for component in (span_conn, graph):
            component.consume(
                batch_of(Signal.TRACES, traces({"service.name": front, "service.instance.id": "f1"}, clients))
            )
            component.consume(
                batch_of(Signal.TRACES, traces({"service.name": back, "service.instance.id": "b1"}, servers))
            )

        def query(promql: str) -> list:
            response = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": promql}, timeout=10)
            return response.json()["data"]["result"]

        def check(promql: str) -> list:
            return eventually(lambda: query(promql), timeout=45, what=f"{promql} in Prometheus")

        calls = check(f'traces_span_metrics_calls_total{{job="{back}",span_kind="SPAN_KIND_SERVER"}}')
        assert calls[0]["metric"]["http_route"] == "/api" and calls[0]["metric"]["instance"] == "b1"
        assert calls[0]["metric"]["service_name"] == back and float(calls[0]["value"][1]) == 5
        errors = check(f'traces_span_metrics_calls_total{{job="{front}",status_code="STATUS_CODE_ERROR"}}')
        assert float(errors[0]["value"][1]) == 1
        check(f'traces_span_metrics_duration_seconds_bucket{{job="{back}",le="0.05"}}')
        edge = check(f'traces_service_graph_request_total{{client="{front}",server="{back}"}}')
        assert float(edge[0]["value"][1]) == 5
        failed = check(f'traces_service_graph_request_failed_total{{client="{front}",server="{back}"}}')
        assert float(failed[0]["value"][1]) == 1
        check(f'traces_service_graph_request_server_seconds_bucket{{client="{front}",server="{back}",le="0.05"}}')
        check(f'traces_service_graph_request_client_seconds_count{{client="{front}",server="{back}"}}')
    finally:
        target.unlink()
        for component in (span_conn, graph):
            component.shutdown(5)
        exporter.shutdown(5)
