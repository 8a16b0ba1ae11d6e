"""Record values on the wire: OTLP protobuf or OTLP/JSON, one ``Export*ServiceRequest`` per record.

Also the two ways the exporter cuts a request into records: one request per trace
(``partition_traces_by_id``) and halving a request until each part fits
``producer.max_message_bytes``. Both keep every item's resource and scope.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, Literal

import orjson
from google.protobuf import json_format

from ..otlp_json import parse_json_request
from ..signals import REQUEST_TYPES, Signal

__all__ = ["DEFAULT_TOPICS", "Encoding", "marshal", "unmarshal", "split_by_trace", "fit", "halves", "pack_serialized"]

Encoding = Literal["otlp_proto", "otlp_json"]

#: The contrib exporter's and receiver's default topic per signal.
DEFAULT_TOPICS: dict[Signal, str] = {
    Signal.TRACES: "otlp_spans",
    Signal.METRICS: "otlp_metrics",
    Signal.LOGS: "otlp_logs",
}

#: (resource list, scope list, item list) field names of each request type.
_FIELDS: dict[Signal, tuple[str, str, str]] = {
    Signal.TRACES: ("resource_spans", "scope_spans", "spans"),
    Signal.METRICS: ("resource_metrics", "scope_metrics", "metrics"),
    Signal.LOGS: ("resource_logs", "scope_logs", "log_records"),
}
_JSON_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})


def _ids_to_hex(node: Any) -> None:
    """OTLP/JSON spells trace and span ids in hex, where protobuf's JSON mapping uses base64."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _JSON_ID_KEYS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            elif isinstance(value, dict | list):
                _ids_to_hex(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                _ids_to_hex(item)


def marshal(message: Any, encoding: Encoding) -> bytes:
    """One record value for ``message`` (an ``Export*ServiceRequest``)."""
    if encoding == "otlp_proto":
        return message.SerializeToString()
    data = json_format.MessageToDict(message, use_integers_for_enums=True)
    _ids_to_hex(data)
    return orjson.dumps(data)


def unmarshal(signal: Signal, value: bytes, encoding: Encoding) -> Any:
    """The request a record value holds; raises ``ValueError`` (or ``DecodeError``) when it holds none."""
    if encoding == "otlp_json":
        return parse_json_request(signal, value)
    message = REQUEST_TYPES[signal]()
    message.ParseFromString(value)
    return message


def split_by_trace(request: Any) -> list[tuple[bytes, Any]]:
    """``[(trace id, request holding only that trace's spans)]`` in order of first appearance.

    As the Go exporter's ``batchpersignal.SplitTraces``: every span keeps its resource and
    scope, and each output request holds exactly one trace.
    """
    out: dict[bytes, Any] = {}
    last_resource: dict[bytes, int] = {}  # trace id -> index of the source resource its last entry copies
    for r, rs in enumerate(request.resource_spans):
        for ss in rs.scope_spans:
            targets: dict[bytes, Any] = {}  # this scope's copy in each trace's request
            for span in ss.spans:
                scope = targets.get(span.trace_id)
                if scope is None:
                    trace = out.get(span.trace_id)
                    if trace is None:
                        trace = out[span.trace_id] = REQUEST_TYPES[Signal.TRACES]()
                    if last_resource.get(span.trace_id) != r:
                        target_rs = trace.resource_spans.add()
                        target_rs.resource.CopyFrom(rs.resource)
                        target_rs.schema_url = rs.schema_url
                        last_resource[span.trace_id] = r
                    scope = targets[span.trace_id] = trace.resource_spans[-1].scope_spans.add()
                    scope.scope.CopyFrom(ss.scope)
                    scope.schema_url = ss.schema_url
                scope.spans.append(span)
    return list(out.items())


def _leaves(signal: Signal, request: Any) -> list[tuple[int, int, Any]]:
    resources, scopes, items = _FIELDS[signal]
    # getattr: protobuf messages, by the field names of the signal (``_FIELDS``).
    return [
        (r, s, item)
        for r, resource in enumerate(getattr(request, resources))
        for s, scope in enumerate(getattr(resource, scopes))
        for item in getattr(scope, items)
    ]


def _rebuild(signal: Signal, request: Any, leaves: list[tuple[int, int, Any]]) -> Any:
    resources, scopes, items = _FIELDS[signal]
    out = REQUEST_TYPES[signal]()
    last: tuple[int, int] | None = None
    # getattr below: protobuf messages, by the field names of the signal (``_FIELDS``).
    last_r: int | None = None
    target_scope: Any = None
    for r, s, item in leaves:
        if r != last_r:
            source_r = getattr(request, resources)[r]
            target_r = getattr(out, resources).add()
            target_r.resource.CopyFrom(source_r.resource)
            target_r.schema_url = source_r.schema_url
            last_r, last = r, None
        if (r, s) != last:
            source_s = getattr(getattr(request, resources)[r], scopes)[s]
            target_scope = getattr(getattr(out, resources)[-1], scopes).add()
            target_scope.scope.CopyFrom(source_s.scope)
            target_scope.schema_url = source_s.schema_url
            last = (r, s)
        getattr(target_scope, items).append(item)
    return out


def halves(signal: Signal, request: Any) -> tuple[Any, Any] | None:
    """The request cut in two by item (span, metric, log record), or None if it holds one item."""
    leaves = _leaves(signal, request)
    if len(leaves) < 2:
        return None
    middle = len(leaves) // 2
    return _rebuild(signal, request, leaves[:middle]), _rebuild(signal, request, leaves[middle:])


def fit(
    signal: Signal, request: Any, limit: int, encode: Callable[[Any], bytes]
) -> tuple[list[tuple[Any, bytes]], list[tuple[Any, bytes]]]:
    """Cut ``request`` until every part encodes to at most ``limit`` bytes.

    Items are packed greedily into parts by their estimated encoded size (one encode of the
    whole request gives the ratio); a part the estimate got wrong is cut again. Returns
    ``(parts that fit, single items too large on their own)``, each as ``(request, encoded
    value)``; a metric is one item with all its data points.
    """
    value = encode(request)
    if len(value) <= limit:
        return [(request, value)], []
    leaves = _leaves(signal, request)
    if len(leaves) < 2:
        return [], [(request, value)]
    budget = 0.9 * limit * max(1, request.ByteSize()) / len(value)
    groups: list[list[tuple[int, int, Any]]] = [[]]
    size = 0.0
    for leaf in leaves:
        estimate = leaf[2].ByteSize() + 8  # the item, its tag and length
        if groups[-1] and size + estimate > budget:
            groups.append([])
            size = 0.0
        groups[-1].append(leaf)
        size += estimate
    if len(groups) == 1:  # the estimate says it fits, the encoding says not: halve
        middle = len(leaves) // 2
        groups = [leaves[:middle], leaves[middle:]]
    fitting: list[tuple[Any, bytes]] = []
    oversized: list[tuple[Any, bytes]] = []
    for group in groups:
        more_fitting, more_oversized = fit(signal, _rebuild(signal, request, group), limit, encode)
        fitting += more_fitting
        oversized += more_oversized
    return fitting, oversized


def _top_level_entries(raw: bytes) -> list[memoryview]:
    """The serialized top-level fields of an ``Export*ServiceRequest``: its resource entries.

    Every request type has one top-level field, ``resource_*`` = 1; each entry alone, and any
    concatenation of entries, is a valid request (a field unknown to this version included).
    """
    view = memoryview(raw)
    entries: list[memoryview] = []
    pos, end = 0, len(raw)
    while pos < end:
        start = pos
        tag, pos = _varint(raw, pos)
        wire = tag & 7
        if wire == 2:
            length, pos = _varint(raw, pos)
            pos += length
        elif wire == 0:
            _, pos = _varint(raw, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire} in a serialized request")
        if pos > end:
            raise ValueError("a serialized request ends inside a field")
        entries.append(view[start:pos])
    return entries


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("a serialized request ends inside a varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def pack_serialized(raw: bytes, limit: int) -> tuple[list[bytes], list[bytes]]:
    """Cut a serialized request at its resource entries into requests of at most ``limit`` bytes.

    No decoding: concatenated entries are a valid request. Returns ``(requests that fit,
    single-resource requests larger than limit)``; only those need decoding to be cut further.
    """
    fitting: list[bytes] = []
    oversized: list[bytes] = []
    current: list[memoryview] = []
    size = 0
    for entry in _top_level_entries(raw):
        if len(entry) > limit:
            oversized.append(bytes(entry))
            continue
        if current and size + len(entry) > limit:
            fitting.append(b"".join(current))
            current, size = [], 0
        current.append(entry)
        size += len(entry)
    if current:
        fitting.append(b"".join(current))
    return fitting, oversized
