"""What the backends refuse, refused at the door: spans and log records with bad ids.

Jaeger (and any collector built on OpenTelemetry's pdata) refuses a *whole* request
when one span's trace id is not 16 bytes ("invalid TraceID length"). Accepting such
a span would put its neighbours at risk once the exporter merges queued requests, so
the receiver removes just the offending items and answers OTLP ``partial_success``.

The rules (OTLP spec, ``trace.proto`` / ``logs.proto``):

* span: ``trace_id`` 16 bytes and not all zero, ``span_id`` 8 bytes and not all zero,
  ``parent_span_id`` empty or 8 bytes; a link's ids empty or of those lengths;
* log record: ``trace_id`` empty or 16 bytes, ``span_id`` empty or 8 bytes.

Only the lengths are checked per item (a few ``len`` calls); requests without a bad
item pass through unchanged, so their bytes are forwarded as they came.
"""

from __future__ import annotations

from typing import Any

from ..signals import Signal

__all__ = ["remove_invalid"]

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)


def _span_problem(span: Any) -> str:
    trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE:
        return f"trace_id is {_describe(trace_id)}; it must be 16 bytes, not all zero"
    if len(span_id) != 8 or span_id == _ZERO_SPAN:
        return f"span_id is {_describe(span_id)}; it must be 8 bytes, not all zero"
    if parent and len(parent) != 8:
        return f"parent_span_id is {_describe(parent)}; it must be empty or 8 bytes"
    for link in span.links:
        if link.trace_id and len(link.trace_id) != 16:
            return f"a link's trace_id is {_describe(link.trace_id)}; it must be 16 bytes"
        if link.span_id and len(link.span_id) != 8:
            return f"a link's span_id is {_describe(link.span_id)}; it must be 8 bytes"
    return ""


def _log_problem(record: Any) -> str:
    if record.trace_id and len(record.trace_id) != 16:
        return f"trace_id is {_describe(record.trace_id)}; it must be empty or 16 bytes"
    if record.span_id and len(record.span_id) != 8:
        return f"span_id is {_describe(record.span_id)}; it must be empty or 8 bytes"
    return ""


def _describe(value: bytes) -> str:
    if not value:
        return "empty"
    if not any(value):
        return f"all zero ({len(value)} bytes)"
    return f"{len(value)} bytes"


def remove_invalid(signal: Signal, message: Any) -> tuple[int, str]:
    """Remove the spans / log records the backends would refuse, in place.

    Returns how many were removed and a message naming the first problem ("" if none).
    Metric points are not checked (no backend here refuses them for their ids).
    """
    if signal is Signal.TRACES:
        return _remove(message.resource_spans, "scope_spans", "spans", _bad_spans, _span_problem, "span")
    if signal is Signal.LOGS:
        return _remove(message.resource_logs, "scope_logs", "log_records", _bad_logs, _log_problem, "log record")
    return 0, ""


def _bad_spans(spans: Any) -> list[int]:
    """Indices of the bad spans: the hot path, so the common checks are inlined."""
    bad = []
    for index, span in enumerate(spans):
        trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
        if (
            len(trace_id) != 16
            or trace_id == _ZERO_TRACE
            or len(span_id) != 8
            or span_id == _ZERO_SPAN
            or (parent and len(parent) != 8)
            or (span.links and _span_problem(span))
        ):
            bad.append(index)
    return bad


def _bad_logs(records: Any) -> list[int]:
    bad = []
    for index, record in enumerate(records):
        trace_id, span_id = record.trace_id, record.span_id
        if (trace_id and len(trace_id) != 16) or (span_id and len(span_id) != 8):
            bad.append(index)
    return bad


def _remove(  # noqa: PLR0917
    resources: Any, scopes_field: str, items_field: str, find_bad: Any, problem_of: Any, noun: str
) -> tuple[int, str]:
    removed = 0
    first = ""
    total = 0
    for resource in resources:
        for scope in getattr(resource, scopes_field):
            items = getattr(scope, items_field)
            total += len(items)
            bad = find_bad(items)
            if not bad:
                continue
            if not first:
                item = items[bad[0]]
                name = getattr(item, "name", "")
                first = f"{noun} {name!r}: {problem_of(item)}" if name else f"{noun}: {problem_of(item)}"
            for index in reversed(bad):
                del items[index]
            removed += len(bad)
    if not removed:
        return 0, ""
    plural = noun + "s" if removed != 1 else noun
    return removed, f"{removed} of {total} {plural} refused for invalid ids (first: {first})"
