"""Requests and Jaeger look-ups shared by the collector core tests."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def jaeger_exporter(jaeger: Any, **extra: Any) -> dict[str, Any]:
    """An ``otlp`` exporter section pointing at a Jaeger server."""
    return {"endpoint": jaeger.urls["otlp_grpc"], "tls": {"insecure": True}, **extra}


def traces_config(jaeger: Any, *, exporter: dict[str, Any] | None = None, receiver: dict | None = None) -> dict:
    return {
        "receivers": {"otlp": receiver or {}},
        "exporters": {"otlp/jaeger": exporter or jaeger_exporter(jaeger)},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger"]}}},
    }


def span_request(trace_ids: list[bytes], spans_per_trace: int = 1, service: str = "core-test") -> bytes:
    """A request with the given traces, each span with ~10 attributes (realistic size)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    attr = rs.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", service
    spans = rs.scope_spans.add()
    spans.scope.name = "meshwatch.tests"
    for t, trace_id in enumerate(trace_ids):
        for i in range(spans_per_trace):
            span = spans.spans.add()
            span.trace_id = trace_id
            span.span_id = (t * 1000 + i + 1).to_bytes(8, "big")
            span.name = f"GET /items/{i}"
            span.kind = 2
            span.start_time_unix_nano = 1_700_000_000_000_000_000 + i * 1000
            span.end_time_unix_nano = span.start_time_unix_nano + 1_500_000
            for k in range(10):
                a = span.attributes.add()
                a.key = f"attr.{k}"
                a.value.string_value = f"value-{k}-{i}"
    return request.SerializeToString()


def random_trace_ids(n: int) -> list[bytes]:
    return [os.urandom(16) for _ in range(n)]


def jaeger_trace(jaeger: Any, trace_id: bytes | str) -> dict[str, Any] | None:
    """The trace as Jaeger's query API returns it, or None if it is not there (yet)."""
    hex_id = trace_id.hex() if isinstance(trace_id, bytes) else trace_id
    try:
        with urllib.request.urlopen(f"{jaeger.url}/api/traces/{hex_id}", timeout=10) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    traces = data.get("data") or []
    return traces[0] if traces else None


def jaeger_span_count(jaeger: Any, trace_id: bytes) -> int:
    trace = jaeger_trace(jaeger, trace_id)
    return len(trace["spans"]) if trace else 0
