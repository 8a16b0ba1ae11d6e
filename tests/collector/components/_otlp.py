"""Builders for OTLP requests and the small host/sink the components are started with in tests.

The host is the real seam (``component.Host``): a storage folder and a logger; the
self-telemetry is the real ``Telemetry``, handed to a component in its create settings.
The sink is a real ``Consumer`` that keeps what it gets.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import ComponentId, CreateSettings
from meshwatch.collector.otlp_values import set_any
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry

NS = 1_000_000_000


def metric(telemetry: Telemetry, name: str, **labels: str) -> float:
    """A sample of the collector's self-telemetry registry (0 when absent)."""
    return telemetry.registry.get_sample_value(name, labels) or 0.0


class Sink:
    """A ``Consumer`` that keeps every batch it is handed."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def consume(self, batch: Batch) -> None:
        self.batches.append(batch)


def settings(text: str, signal: Signal | None = None, *, telemetry: Telemetry) -> CreateSettings:
    return CreateSettings(ComponentId.parse(text), signal, telemetry)


def kvs(attributes: dict[str, Any]) -> list[KeyValue]:
    out = []
    for key, value in attributes.items():
        kv = KeyValue(key=key)
        set_any(kv.value, value)
        out.append(kv)
    return out


def attrs_dict(attributes: Any) -> dict[str, Any]:
    from meshwatch.collector.otlp_values import any_to_python

    return {kv.key: any_to_python(kv.value) for kv in attributes}


def span(
    name: str = "GET /",
    *,
    trace_id: bytes | None = None,
    span_id: bytes | None = None,
    parent: bytes = b"",
    kind: int = Span.SPAN_KIND_SERVER,
    start: int | None = None,
    duration: float = 0.01,
    error: bool = False,
    attributes: dict[str, Any] | None = None,
) -> Span:
    start = start if start is not None else time.time_ns()
    return Span(
        trace_id=trace_id or os.urandom(16),
        span_id=span_id or os.urandom(8),
        parent_span_id=parent,
        name=name,
        kind=kind,
        start_time_unix_nano=start,
        end_time_unix_nano=start + int(duration * NS),
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
        attributes=kvs(attributes or {}),
    )


def traces(resource: dict[str, Any], spans: list[Span], scope: str = "tests") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(kvs(resource))
    ss = rs.scope_spans.add()
    ss.scope.name = scope
    ss.spans.extend(spans)
    return request


def logs(resource: dict[str, Any], records: list[dict[str, Any]], scope: str = "tests") -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.extend(kvs(resource))
    sl = rl.scope_logs.add()
    sl.scope.name = scope
    sl.scope.version = "1.0"
    for spec in records:
        record = sl.log_records.add()
        record.time_unix_nano = spec.get("time", time.time_ns())
        record.observed_time_unix_nano = spec.get("observed", 0)
        record.severity_number = spec.get("severity_number", 9)
        record.severity_text = spec.get("severity_text", "")
        body = spec.get("body", "hello")
        set_any(record.body, body)
        record.attributes.extend(kvs(spec.get("attributes", {})))
        record.trace_id = spec.get("trace_id", b"")
        record.span_id = spec.get("span_id", b"")
    return request


def scrape_with_honor_labels(prometheus: Any, address: str) -> Path:
    """Have the test Prometheus scrape ``address`` with ``honor_labels: true``, as the
    contract says Prometheus scrapes the collector's exporter (its ``job``/``instance``
    are the services'). Returns the target file; unlink it to stop scraping."""
    name = f"components-{uuid.uuid4().hex[:8]}"
    prometheus.add_scrape_target(name, address, honor_labels=True)
    return Path(prometheus.workdir) / "targets" / "honor_labels" / f"{name}.json"


def batch_of(signal: Signal, message: Any) -> Batch:
    """A batch as a receiver makes it: from the serialized bytes."""
    return Batch.from_bytes(signal, message.SerializeToString())


def metrics_request() -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest()
