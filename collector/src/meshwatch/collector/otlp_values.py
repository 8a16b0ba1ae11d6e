"""Small helpers over OTLP protobuf messages shared by part B's components.

Attribute lists in OTLP are repeated ``KeyValue`` messages, not maps; these helpers
read and edit them in place on the upb message (no per-record Python objects) and
convert ``AnyValue`` to the plain forms the exporters need (a Prometheus label
string, a JSON value).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from .signals import Signal

__all__ = [
    "any_to_python",
    "any_to_string",
    "set_any",
    "python_to_any",
    "find",
    "get",
    "attribute_lists",
    "format_float",
]


def format_float(value: float) -> str:
    """A double as the OpenTelemetry Collector prints it (Go's ``FormatFloat(v, 'f', -1, 64)``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    if "e" in text or "E" in text:
        from decimal import Decimal

        text = format(Decimal(text), "f")
    if text.endswith(".0"):
        text = text[:-2]
    return text


def any_to_python(value: AnyValue) -> Any:
    """An ``AnyValue`` as a JSON-friendly Python value (bytes as base64)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        number = value.double_value
        return number if math.isfinite(number) else format_float(number)
    if kind == "array_value":
        return [any_to_python(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_to_python(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None


def any_to_string(value: AnyValue) -> str:
    """An ``AnyValue`` as one string, as pdata's ``Value.AsString`` (label values, ids)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        return format_float(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if kind is None:
        return ""
    import orjson

    return orjson.dumps(any_to_python(value)).decode()


def set_any(target: AnyValue, value: Any) -> None:
    """Write a Python value (from YAML config) into ``target``."""
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, (list, tuple)):
        target.array_value.SetInParent()
        for item in value:
            set_any(target.array_value.values.add(), item)
    elif isinstance(value, dict):
        target.kvlist_value.SetInParent()
        for key, item in value.items():
            set_any(target.kvlist_value.values.add(key=str(key)).value, item)
    elif value is None:
        target.Clear()
    else:
        target.string_value = str(value)


def python_to_any(value: Any) -> AnyValue:
    result = AnyValue()
    set_any(result, value)
    return result


def find(attributes: Any, key: str) -> int:
    """Index of ``key`` in a repeated ``KeyValue`` field, or -1."""
    for index, kv in enumerate(attributes):
        if kv.key == key:
            return index
    return -1


def get(attributes: Any, key: str) -> AnyValue | None:
    for kv in attributes:
        if kv.key == key:
            return kv.value
    return None


def attribute_lists(signal: Signal, message: Any) -> Iterator[Any]:
    """Every item-level attribute list of a request: spans, log records, metric data points."""
    if signal is Signal.TRACES:
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    yield span.attributes
    elif signal is Signal.LOGS:
        for rl in message.resource_logs:
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    yield record.attributes
    else:
        for rm in message.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    if kind is None:
                        continue
                    for point in getattr(metric, kind).data_points:  # getattr: the protobuf oneof's member
                        yield point.attributes


def resources(signal: Signal, message: Any) -> Iterator[Any]:
    """The ``Resource`` message of every resource entry of a request."""
    if signal is Signal.TRACES:
        entries = message.resource_spans
    elif signal is Signal.LOGS:
        entries = message.resource_logs
    else:
        entries = message.resource_metrics
    for entry in entries:
        yield entry.resource
