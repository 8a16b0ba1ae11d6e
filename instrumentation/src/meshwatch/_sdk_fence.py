"""The one place that decides whether meshwatch's faster replacements of SDK parts are used.

meshwatch replaces four parts of the OpenTelemetry SDK for speed: the span and
tracer classes (``_span``), the OTLP span and log encoders (``_otlp``) and the
log handler's direct construction of the SDK's log records (``_logs``, in place
of the SDK's ``LoggingHandler`` → ``Logger.emit`` path). They rely
on SDK internals (private attributes of ``ReadableSpan``, ``BoundedAttributes``,
the tracer-metrics hook, ...), which any SDK release may change. So at ``init()``,
once per process, this module imports them and checks that they still produce what
the stock SDK produces for a sample of spans and log records built to exercise the
edge cases (sequences, over-long strings, events, links, status, a remote parent).
Where an import fails or a result differs, the stock SDK part is used instead and
one warning line says which part and why; ``MESHWATCH_SDK_FAST_PATH=false`` forces
the stock parts. The telemetry is the same either way: only the CPU cost differs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

__all__ = ["SdkParts", "sdk_parts"]

_logger = logging.getLogger("meshwatch")

Encoder = Callable[[Sequence[Any]], bytes]


@dataclass(frozen=True)
class SdkParts:
    """The tracer-provider class and encoders ``init()`` builds with, and why any fell back."""

    tracer_provider: type[TracerProvider]
    encode_spans: Encoder
    encode_logs: Encoder
    fast_spans: bool
    fast_encoders: bool
    #: meshwatch's handler builds the OTLP log record itself; False: the SDK's LoggingHandler does.
    fast_logs: bool = False
    fallback_reason: str | None = None


def _official_span_encoder(spans: Sequence[Any]) -> bytes:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return encode_spans(spans).SerializeToString()


def _official_log_encoder(records: Sequence[Any]) -> bytes:
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

    return encode_logs(records).SerializeToString()


def _sample_spans(provider: TracerProvider) -> list[Any]:
    """The same spans, whatever the provider class: every attribute kind and span feature once."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import (
        Link,
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
        set_span_in_context,
    )

    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("meshwatch.fence", "1.0", schema_url="https://opentelemetry.io/schemas/1.21.0")
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    attributes = {"s": "text é", "i": 42, "f": 1.5, "b": True, "list": ["a", "b"], "ints": (1, 2), "none": None}
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes=attributes) as root:
        root.set_attribute("later", "x" * 50)
        root.set_attributes({"http.route": "/items/{id}", "n": 7})
        root.add_event("event", {"x": 1, "y": [1.5, 2.5]})
        root.set_status(Status(StatusCode.ERROR, "it broke"))
        with tracer.start_as_current_span("child", kind=SpanKind.CLIENT, links=[Link(remote, {"l": "v"})]) as child:
            child.update_name("child renamed")
    with tracer.start_as_current_span("remote-child", context=set_span_in_context(NonRecordingSpan(remote))) as s:
        s.set_status(Status(StatusCode.OK))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def _summary(span: Any) -> tuple[Any, ...]:
    """What a user sees of a span, without its random ids and clock readings."""
    parent = span.parent
    return (
        span.name,
        span.kind,
        dict(span.attributes or {}),
        [(e.name, dict(e.attributes or {})) for e in span.events],
        [(link.context.trace_id, link.context.span_id, dict(link.attributes or {})) for link in span.links],
        (span.status.status_code, span.status.description),
        None if parent is None else (parent.is_remote, parent.trace_id == span.context.trace_id),
        span.context.trace_flags,
        span.dropped_attributes,
        span.dropped_events,
        span.dropped_links,
        span.instrumentation_scope,
        span.resource.attributes,
        span.end_time is not None and span.end_time >= span.start_time,
    )


def _sample_logs() -> list[Any]:
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.sdk._logs import ReadableLogRecord
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import TraceFlags

    from ._logs import _OTLPRecord

    resource = Resource(_FENCE_RESOURCE)
    return [
        ReadableLogRecord(
            log_record=_OTLPRecord(
                1_700_000_000_000_000_000 + i,
                1_700_000_000_000_000_500 + i,
                0xAB if i % 2 else 0,
                0xCD if i % 2 else 0,
                TraceFlags(i % 2),
                "INFO",
                SeverityNumber.INFO,
                f"message {i}",
                {"n": i, "nested": {"a": [1, "x"]}},
            ),
            resource=resource,
            instrumentation_scope=InstrumentationScope(f"logger.{i % 2}"),
        )
        for i in range(2)
    ]


@functools.cache
def _stock_spans() -> list[Any]:
    """The sample spans as the SDK's own classes record them: what both checks compare against
    (made once, inside whichever check asks first, so a failure is that check's reason)."""
    from opentelemetry.sdk.resources import Resource

    return _sample_spans(TracerProvider(resource=Resource(_FENCE_RESOURCE), shutdown_on_exit=False))


_FENCE_RESOURCE = {"service.name": "meshwatch-fence"}


def _check_spans() -> tuple[type[TracerProvider] | None, str | None]:
    try:
        from opentelemetry.sdk.resources import Resource

        from ._span import MeshwatchTracerProvider

        ours = _sample_spans(MeshwatchTracerProvider(resource=Resource(_FENCE_RESOURCE), shutdown_on_exit=False))
        stock = _stock_spans()
    except Exception as exc:
        return None, f"meshwatch's span class: {type(exc).__name__}: {exc}"
    if [_summary(s) for s in ours] != [_summary(s) for s in stock]:
        return None, "meshwatch's span class records spans differently from this SDK's"
    return MeshwatchTracerProvider, None


def _check_encoders() -> tuple[tuple[Encoder, Encoder] | None, str | None]:
    try:
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as official_logs
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official_spans
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        from ._otlp import encode_logs, encode_spans

        spans = _stock_spans()
        same_spans = ExportTraceServiceRequest.FromString(encode_spans(spans)) == official_spans(spans)
        records = _sample_logs()
        same_logs = ExportLogsServiceRequest.FromString(encode_logs(records)) == official_logs(records)
    except Exception as exc:
        return None, f"meshwatch's OTLP encoder: {type(exc).__name__}: {exc}"
    if not (same_spans and same_logs):
        return None, "meshwatch's OTLP encoder encodes differently from this SDK's exporter"
    return (encode_spans, encode_logs), None


def _check_log_records() -> str | None:
    """meshwatch's log records must carry every field the SDK's LogRecord sets, and encode the same."""
    try:
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as official_logs
        from opentelemetry.sdk._logs import ReadableLogRecord
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import TraceFlags

        from ._logs import _OTLPRecord

        fields = (1_700_000_000_000_000_000, 1_700_000_000_000_000_500, 0xAB, 0xCD, TraceFlags(1), "WARN")
        values = (SeverityNumber.WARN, "message", {"n": 1, "exception.type": "ValueError"})
        ours = _OTLPRecord(*fields, *values)
        stock = LogRecord(
            timestamp=fields[0],
            observed_timestamp=fields[1],
            trace_id=fields[2],
            span_id=fields[3],
            trace_flags=fields[4],
            severity_text=fields[5],
            severity_number=values[0],
            body=values[1],
            attributes=values[2],
        )
        missing = set(vars(stock)) - set(vars(ours))
        if missing:
            return f"meshwatch's log records lack the SDK LogRecord's {', '.join(sorted(missing))}"
        scope, resource = InstrumentationScope("meshwatch.fence"), Resource(_FENCE_RESOURCE)
        encoded = [
            official_logs([ReadableLogRecord(log_record=r, resource=resource, instrumentation_scope=scope)])
            for r in (ours, stock)
        ]
    except Exception as exc:
        return f"meshwatch's log records: {type(exc).__name__}: {exc}"
    if encoded[0] != encoded[1]:
        return "meshwatch's log records encode differently from this SDK's"
    return None


_CACHE: dict[bool, SdkParts] = {}


def sdk_parts(*, fast_path: bool = True) -> SdkParts:
    """The parts to build with; checked once per process (about a millisecond), never raises."""
    if fast_path in _CACHE:
        return _CACHE[fast_path]
    if not fast_path:
        parts = SdkParts(
            TracerProvider, _official_span_encoder, _official_log_encoder, False, False, False, "configured"
        )
    else:
        provider, span_reason = _check_spans()
        encoders, encoder_reason = _check_encoders()
        log_reason = _check_log_records()
        reasons = [r for r in (span_reason, encoder_reason, log_reason) if r]
        parts = SdkParts(
            provider or TracerProvider,
            encoders[0] if encoders else _official_span_encoder,
            encoders[1] if encoders else _official_log_encoder,
            provider is not None,
            encoders is not None,
            log_reason is None,
            "; ".join(reasons) or None,
        )
        if reasons:
            from importlib.metadata import version

            _logger.warning(
                "meshwatch is using the stock OpenTelemetry SDK parts (slower, same telemetry) with "
                "opentelemetry-sdk %s: %s",
                version("opentelemetry-sdk"),
                parts.fallback_reason,
            )
    _CACHE[fast_path] = parts
    return parts
