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

Fast path for traces (``spans_all_valid``): walking every span from Python costs about
0.4 µs per span (a wrapper object per span and per id). Instead the request's bytes are
parsed once more with a private schema that knows only the id fields (upb skips the rest),
the unknown fields are dropped, and each ``ScopeSpans`` re-serialized: what is left is, per
span, exactly ``trace_id``, ``span_id`` and ``parent_span_id`` in canonical order, which one
regular expression checks in C. A request it does not vouch for (links, or any bad id) is
checked span by span as before, so the answer is the same either way, at half the cost
for the common request. The ids-only parse holds a copy of the request's other fields until
they are dropped, so requests over ``FAST_PATH_MAX_BYTES`` (1 MiB, some 2,500 spans) take
the span-by-span check: the memory a large request costs while decoded stays what the
memory limiter's admission expects.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass

from ..signals import Signal

__all__ = ["remove_invalid", "spans_all_valid"]

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)


def _span_ids_request() -> type:
    """``ExportTraceServiceRequest`` reduced to the span and link ids (same field numbers)."""
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="meshwatch_span_ids.proto", package="meshwatch.ids")
    proto.syntax = "proto3"
    layout = {
        "Link": [("trace_id", 1, None), ("span_id", 2, None)],
        "Span": [("trace_id", 1, None), ("span_id", 2, None), ("parent_span_id", 4, None), ("links", 13, "Link")],
        "ScopeSpans": [("spans", 2, "Span")],
        "ResourceSpans": [("scope_spans", 2, "ScopeSpans")],
        "Request": [("resource_spans", 1, "ResourceSpans")],
    }
    for name, fields in layout.items():
        message = proto.message_type.add(name=name)
        for field_name, number, nested in fields:
            if nested is None:
                message.field.add(name=field_name, number=number, type=field.TYPE_BYTES, label=field.LABEL_OPTIONAL)
            else:
                message.field.add(
                    name=field_name,
                    number=number,
                    type=field.TYPE_MESSAGE,
                    label=field.LABEL_REPEATED,
                    type_name=f".meshwatch.ids.{nested}",
                )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return GetMessageClass(pool.FindMessageTypeByName("meshwatch.ids.Request"))


_SpanIdsRequest = _span_ids_request()
#: Larger requests are checked span by span (see the module docstring).
FAST_PATH_MAX_BYTES = 1 << 20
_IDS = rb"\x0a\x10(?!\x00{16}).{16}\x12\x08(?!\x00{8}).{8}"  # trace_id: 16 bytes, span_id: 8, neither all zero
#: A serialized ids-only ``ScopeSpans`` whose every span is valid and has no links:
#: ``spans`` entries of 28 bytes (the two ids) or 38 (and an 8-byte ``parent_span_id``).
_ALL_VALID = re.compile(rb"(?:\x12\x1c" + _IDS + rb"|\x12\x26" + _IDS + rb"\x22\x08.{8})*", re.DOTALL)


def spans_all_valid(raw: bytes) -> bool:
    """True if every span of this (already decoded once) trace request has valid ids and no links.

    False means "not known": the span-by-span check decides (see the module docstring).
    """
    ids = _SpanIdsRequest()
    ids.ParseFromString(raw)
    ids.DiscardUnknownFields()
    return all(
        _ALL_VALID.fullmatch(scope.SerializeToString()) is not None
        for resource in ids.resource_spans
        for scope in resource.scope_spans
    )


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


def remove_invalid(signal: Signal, message: Any, raw: bytes | None = None) -> tuple[int, str]:
    """Remove the spans / log records the backends would refuse, in place.

    Returns how many were removed and a message naming the first problem ("" if none).
    Metric points are not checked (no backend here refuses them for their ids). ``raw``,
    the request's bytes if ``message`` is still exactly them, allows the fast path.
    """
    if signal is Signal.TRACES:
        if raw is not None and len(raw) <= FAST_PATH_MAX_BYTES and spans_all_valid(raw):
            return 0, ""
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
    # getattr: protobuf messages, by the signal's field names; a log record has no ``name``.
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
