"""Spans sent to a real meshwatch-collector arrive unchanged in the real Jaeger.

Each transport a service can use is covered: the OTel SDK over gRPC and over
HTTP/protobuf, OTLP/JSON as the spec encodes it (hex ids, enum ints, lowerCamelCase),
and gzip. "Unchanged" is checked field by field on what Jaeger's query API returns.
"""

from __future__ import annotations

import gzip
import json
import time
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from meshwatch.stack.testing import eventually

from ._helpers import jaeger_trace, random_trace_ids, span_request, traces_config

pytestmark = pytest.mark.integration


def _send_with_sdk(exporter, service: str) -> tuple[str, str]:
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "deployment.environment.name": "test"})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("meshwatch.tests", "1.2.3")
    with tracer.start_as_current_span("checkout", kind=SpanKind.SERVER) as parent:
        parent.set_attribute("http.request.method", "POST")
        parent.set_attribute("http.route", "/checkout")
        parent.set_attribute("http.response.status_code", 500)
        parent.set_status(Status(StatusCode.ERROR, "payment failed"))
        with tracer.start_as_current_span("charge card", kind=SpanKind.CLIENT) as child:
            child.set_attribute("peer.service", "payments")
            child.add_event("retry", {"attempt": 2})
    provider.shutdown()
    ctx = parent.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _check_sdk_trace(jaeger, trace_id: str, parent_span_id: str, service: str) -> None:
    def both_spans() -> dict | None:
        trace = jaeger_trace(jaeger, trace_id)
        return trace if trace and len(trace["spans"]) == 2 else None

    trace = eventually(both_spans, timeout=30, what=f"both spans of trace {trace_id} in Jaeger")
    spans = {s["operationName"]: s for s in trace["spans"]}
    parent, child = spans["checkout"], spans["charge card"]
    assert parent["spanID"] == parent_span_id
    assert child["references"][0]["spanID"] == parent_span_id
    tags = {t["key"]: t["value"] for t in parent["tags"]}
    assert tags["http.route"] == "/checkout" and tags["http.response.status_code"] == 500
    assert tags["span.kind"] == "server" and tags["otel.status_code"] == "ERROR"
    assert tags["otel.status_description"] == "payment failed"
    assert child["logs"][0]["fields"][0]["value"] == "retry"
    process = trace["processes"][parent["processID"]]
    assert process["serviceName"] == service
    assert {t["key"]: t["value"] for t in process["tags"]}["deployment.environment.name"] == "test"


def test_sdk_over_grpc_arrives_unchanged(collector_factory, jaeger) -> None:
    collector = collector_factory(traces_config(jaeger))
    exporter = GrpcSpanExporter(endpoint=f"http://{collector.grpc_endpoint}", insecure=True)
    trace_id, span_id = _send_with_sdk(exporter, "grpc-svc")
    _check_sdk_trace(jaeger, trace_id, span_id, "grpc-svc")
    assert collector.metric("meshwatch_receiver_accepted_items_total", transport="grpc", signal="traces") == 2
    eventually(lambda: collector.metric("meshwatch_exporter_sent_items_total", exporter="otlp/jaeger") == 2)


def test_sdk_over_http_protobuf_arrives_unchanged(collector_factory, jaeger) -> None:
    collector = collector_factory(traces_config(jaeger))
    exporter = HttpSpanExporter(endpoint=f"{collector.http_url}/v1/traces")
    trace_id, span_id = _send_with_sdk(exporter, "http-svc")
    _check_sdk_trace(jaeger, trace_id, span_id, "http-svc")
    assert collector.metric("meshwatch_receiver_accepted_items_total", transport="http", signal="traces") == 2


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_otlp_json_with_hex_ids_and_gzip_arrive_unchanged(collector_factory, jaeger) -> None:
    collector = collector_factory(traces_config(jaeger))
    trace_id, span_id, parent_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173"
    now = time.time_ns()
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "manual", "version": "1"},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "parentSpanId": parent_id,
                                "name": "json span",
                                "kind": 3,  # enum as an int, as the OTLP JSON encoding asks
                                "startTimeUnixNano": str(now),
                                "endTimeUnixNano": str(now + 2_000_000),
                                "attributes": [
                                    {"key": "count", "value": {"intValue": "42"}},
                                    {"key": "ratio", "value": {"doubleValue": 0.5}},
                                    {"key": "ok", "value": {"boolValue": True}},
                                ],
                                "status": {"code": 1},
                                "unknownFieldFromTheFuture": {"ignored": True},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    status, response, _ = _post(
        f"{collector.http_url}/v1/traces",
        gzip.compress(json.dumps(body).encode()),
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert (status, json.loads(response)) == (200, {})
    trace = eventually(lambda: jaeger_trace(jaeger, trace_id), timeout=30, what="JSON trace in Jaeger")
    span = trace["spans"][0]
    assert span["spanID"] == span_id and span["operationName"] == "json span"
    assert span["references"][0]["spanID"] == parent_id
    assert span["duration"] == 2000  # microseconds
    tags = {t["key"]: t["value"] for t in span["tags"]}
    assert tags["count"] == 42 and tags["ratio"] == 0.5 and tags["ok"] is True
    assert tags["span.kind"] == "client"


def test_big_realistic_batches_arrive_complete(collector_factory, jaeger) -> None:
    """Twenty 512-span requests (10 attributes each) over gRPC, merged by the queue, all in Jaeger."""
    import grpc

    collector = collector_factory(traces_config(jaeger))
    channel = grpc.insecure_channel(collector.grpc_endpoint)
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    trace_ids = random_trace_ids(20 * 8)
    for i in range(20):
        export(span_request(trace_ids[i * 8 : (i + 1) * 8], spans_per_trace=64), timeout=30)
    channel.close()
    assert collector.metric("meshwatch_receiver_accepted_items_total", transport="grpc") == 20 * 512
    eventually(
        lambda: collector.metric("meshwatch_exporter_sent_items_total", exporter="otlp/jaeger") == 20 * 512,
        timeout=60,
        what="all spans sent",
    )
    for trace_id in trace_ids[::16]:
        trace = eventually(lambda t=trace_id: jaeger_trace(jaeger, t), timeout=30, what="trace in Jaeger")
        assert len(trace["spans"]) == 64
        tags = {t["key"]: t["value"] for t in trace["spans"][0]["tags"]}
        assert sum(k.startswith("attr.") for k in tags) == 10


def test_otlphttp_exporter_delivers_to_jaeger(collector_factory, jaeger) -> None:
    """The same path with the otlphttp exporter (protobuf over HTTP) to Jaeger's OTLP/HTTP port."""
    import grpc

    config = traces_config(jaeger)
    config["exporters"] = {"otlphttp/jaeger": {"endpoint": jaeger.urls["otlp_http"]}}
    config["service"]["pipelines"]["traces"]["exporters"] = ["otlphttp/jaeger"]
    collector = collector_factory(config)
    trace_ids = random_trace_ids(4)
    with grpc.insecure_channel(collector.grpc_endpoint) as channel:
        channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(
            span_request(trace_ids, spans_per_trace=5), timeout=30
        )
    for trace_id in trace_ids:
        trace = eventually(lambda t=trace_id: jaeger_trace(jaeger, t), timeout=30, what="trace via otlphttp")
        assert len(trace["spans"]) == 5
    eventually(lambda: collector.metric("meshwatch_exporter_sent_items_total", exporter="otlphttp/jaeger") == 20)
