"""RED metrics aggregated from spans: the right series, counts, bounds, exemplars and active gauge."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import SpanLimits
from opentelemetry.trace import SpanKind

from meshwatch._red import _SERVER_KEYS, _SERVER_PAIRS, RedMetrics, _server_key, _values
from meshwatch._span import MeshwatchTracerProvider

NEW = {
    "http.request.method": "GET",
    "url.scheme": "http",
    "network.protocol.version": "1.1",
}
OLD = {"http.method": "GET", "http.scheme": "http", "http.flavor": "1.1"}


@pytest.mark.parametrize("names", [NEW, OLD], ids=["stable", "old"])
def test_server_spans_become_one_series_per_route_and_status(names: dict[str, str]) -> None:
    red = RedMetrics([0.005, 0.01, 0.1])
    tracer = MeshwatchTracerProvider(span_limits=SpanLimits(), shutdown_on_exit=False).get_tracer("t")
    status_key = "http.response.status_code" if names is NEW else "http.status_code"
    durations = [(0.002, 200), (0.05, 200), (0.2, 500)]
    for seconds, status in durations:
        span = tracer.start_span("GET /items/{id}", kind=SpanKind.SERVER, attributes=names, start_time=1_000)
        red.on_start(span)
        span.set_attributes({"http.route": "/items/{id}", status_key: status})
        if status == 500:
            span.set_attribute("error.type", "500")
        span.end(end_time=1_000 + int(seconds * 1e9))
        red.on_end(span)
        # the unrolled hot-path key is the generic one
        assert _server_key(span._attributes._dict.get) == _values(span._attributes, _SERVER_PAIRS)

    histogram, active = red.metrics()
    assert histogram.name == "http.server.request.duration"
    points = {p.attributes["http.response.status_code"]: p for p in histogram.data.data_points}
    ok, failed = points[200], points[500]
    assert ok.attributes == {
        "http.request.method": "GET",
        "http.route": "/items/{id}",
        "http.response.status_code": 200,
        "url.scheme": "http",
        "network.protocol.version": "1.1",
    }
    assert set(failed.attributes) == set(_SERVER_KEYS)
    assert ok.count == 2 and list(ok.bucket_counts) == [1, 0, 1, 0]
    assert ok.min == pytest.approx(0.002) and ok.max == pytest.approx(0.05)
    assert ok.sum == pytest.approx(0.052)
    assert list(failed.bucket_counts) == [0, 0, 0, 1]
    assert sorted(e.value for e in ok.exemplars) == pytest.approx([0.002, 0.05])
    assert all(e.trace_id and e.span_id for e in ok.exemplars)
    assert active.name == "http.server.active_requests"
    assert [(p.attributes, p.value) for p in active.data.data_points] == [
        ({"http.request.method": "GET", "url.scheme": "http"}, 0)
    ]


def test_active_requests_count_requests_in_flight_and_ignore_non_http_spans() -> None:
    red = RedMetrics([0.1])
    tracer = MeshwatchTracerProvider(shutdown_on_exit=False).get_tracer("t")
    spans = [tracer.start_span("GET", kind=SpanKind.SERVER, attributes=NEW) for _ in range(3)]
    internal = tracer.start_span("work", kind=SpanKind.SERVER, attributes={"job": "x"})
    for span in [*spans, internal]:
        red.on_start(span)
    spans[0].end()
    red.on_end(spans[0])
    internal.end()
    red.on_end(internal)
    metrics = {m.name: m for m in red.metrics()}
    (point,) = metrics["http.server.active_requests"].data.data_points
    assert point.value == 2
    (series,) = metrics["http.server.request.duration"].data.data_points
    assert series.count == 1


def _client_call(red: RedMetrics, tracer, attributes: dict) -> object:
    span = tracer.start_span("POST", kind=SpanKind.CLIENT, attributes=attributes, start_time=1_000)
    red.on_start(span)
    span.set_attribute("http.response.status_code", 200)
    span.end(end_time=2_000_000)
    red.on_end(span)
    return span


def test_the_peer_service_mapping_names_whom_a_client_called_on_the_span_and_the_series() -> None:
    """``gateway → orders``, not ``gateway → 127.0.0.1``: by host:port first, then by host."""
    red = RedMetrics([0.005], {"127.0.0.1:8001": "orders", "payments.internal": "payments"})
    tracer = MeshwatchTracerProvider(span_limits=SpanLimits(), shutdown_on_exit=False).get_tracer("t")
    call = {"http.request.method": "POST", "url.scheme": "http"}
    by_port = _client_call(red, tracer, {**call, "server.address": "127.0.0.1", "server.port": 8001})
    by_host = _client_call(red, tracer, {**call, "server.address": "payments.internal", "server.port": 443})
    unknown = _client_call(red, tracer, {**call, "server.address": "127.0.0.1", "server.port": 9999})
    own = _client_call(red, tracer, {**call, "server.address": "127.0.0.1", "server.port": 8001, "peer.service": "x"})
    old = _client_call(red, tracer, {"http.method": "POST", "net.peer.name": "127.0.0.1", "net.peer.port": 8001})
    assert [s.attributes.get("peer.service") for s in (by_port, by_host, unknown, own, old)] == [
        "orders",
        "payments",
        None,
        "x",  # set by the application: kept
        "orders",
    ]
    (histogram,) = red.metrics()
    # one series per call here (the old-convention call has no url.scheme: a series of its own)
    assert sorted(str(p.attributes.get("peer.service")) for p in histogram.data.data_points) == [
        "None",
        "orders",
        "orders",
        "payments",
        "x",
    ]


def test_without_a_mapping_client_spans_are_left_as_they_are() -> None:
    red = RedMetrics([0.005])
    tracer = MeshwatchTracerProvider(span_limits=SpanLimits(), shutdown_on_exit=False).get_tracer("t")
    span = _client_call(red, tracer, {"http.request.method": "GET", "server.address": "127.0.0.1", "server.port": 8001})
    assert "peer.service" not in span.attributes
    (histogram,) = red.metrics()
    assert "peer.service" not in histogram.data.data_points[0].attributes
