"""An OTLP/HTTP receiver that keeps every span, log record and metric point it is sent: a test sink.

Tests that count what was exported (an SDK's spans, what a collector delivered after a
SIGKILL) use this rather than Jaeger: Jaeger's query API merges identical spans, so a
loss or a duplicate would be hidden there. It answers 200 to every well-formed export,
exactly as the OTLP/HTTP spec says, and counts every span it is sent, duplicates too.
"""

from __future__ import annotations

import contextlib
import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None  # getattr: the protobuf oneof's member


def _attrs(attributes: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in attributes}


@dataclass(frozen=True)
class SpanSeen:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    error: bool = False  # status code ERROR
    events: tuple[str, ...] = ()  # event names ("exception")


@dataclass(frozen=True)
class LogSeen:
    body: Any
    trace_id: str
    severity: str
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass(frozen=True)
class PointSeen:
    metric: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    count: int | None  # histograms
    value: float | None  # sums and gauges


@dataclass
class OtlpSink:
    """What arrived, in arrival order; ``url`` is the base for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""

    url: str = ""
    spans: list[SpanSeen] = field(default_factory=list)
    logs: list[LogSeen] = field(default_factory=list)
    points: list[PointSeen] = field(default_factory=list)
    #: (path, request headers) of every export received, to check what each signal was sent with.
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def headers_by_path(self) -> dict[str, list[dict[str, str]]]:
        """Request headers (lower-case names) of every export, by path (``/v1/traces``, ...)."""
        with self.lock:
            out: dict[str, list[dict[str, str]]] = {}
            for path, headers in self.requests:
                out.setdefault(path, []).append(headers)
            return out

    def span_names(self) -> list[str]:
        with self.lock:
            return [s.name for s in self.spans]

    def duplicate_spans(self) -> int:
        """Spans received more than once (same trace and span id): received minus distinct."""
        with self.lock:
            return len(self.spans) - len({(s.trace_id, s.span_id) for s in self.spans})

    def span_ids(self) -> set[tuple[str, str]]:
        with self.lock:
            return {(s.trace_id, s.span_id) for s in self.spans}

    def _add_traces(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        seen = []
        for rs in request.resource_spans:
            resource = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    seen.append(
                        SpanSeen(
                            s.name,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            s.kind,
                            _attrs(s.attributes),
                            resource,
                            s.status.code == 2,  # STATUS_CODE_ERROR
                            tuple(e.name for e in s.events),
                        )
                    )
        with self.lock:
            self.spans.extend(seen)

    def _add_logs(self, body: bytes) -> None:
        request = ExportLogsServiceRequest.FromString(body)
        seen = []
        for rl in request.resource_logs:
            resource = _attrs(rl.resource.attributes)
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    body, trace_id = _value(r.body), r.trace_id.hex()
                    seen.append(LogSeen(body, trace_id, r.severity_text, _attrs(r.attributes), resource))
        with self.lock:
            self.logs.extend(seen)

    def _add_metrics(self, body: bytes) -> None:
        request = ExportMetricsServiceRequest.FromString(body)
        seen = []
        for rm in request.resource_metrics:
            resource = _attrs(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    for p in getattr(m, kind).data_points:  # getattr: the protobuf oneof's member
                        count = p.count if kind in ("histogram", "exponential_histogram") else None
                        value = None
                        if kind in ("sum", "gauge"):
                            value = p.as_double if p.WhichOneof("value") == "as_double" else float(p.as_int)
                        seen.append(PointSeen(m.name, _attrs(p.attributes), resource, count, value))
        with self.lock:
            self.points.extend(seen)


@contextlib.contextmanager
def otlp_sink(port: int = 0) -> Iterator[OtlpSink]:
    """Serve an :class:`OtlpSink` on loopback ``port`` (0: a free one) for the duration of the block.

    A given port lets a test point an exporter at a sink that is not there yet and start it later.
    """
    sink = OtlpSink()
    routes = {"/v1/traces": sink._add_traces, "/v1/logs": sink._add_logs, "/v1/metrics": sink._add_metrics}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with sink.lock:
                sink.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            add = routes.get(self.path)
            if add is None:
                self.send_error(404)
                return
            try:
                add(body)
            except Exception as exc:  # a malformed body is the sender's bug: say so, as a collector would
                self.send_error(400, str(exc))
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    sink.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="otlp-sink", daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()


def sink_env(sink: OtlpSink, **extra: str) -> dict[str, str]:
    """Settings that send all three signals to ``sink`` over OTLP/HTTP, metrics every second."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        **extra,
    }
