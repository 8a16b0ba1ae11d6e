"""A faster decoded form of ``ExportLogsServiceRequest`` for encoders that read every attribute.

Walking a repeated ``KeyValue`` field from Python creates a wrapper object per element
and per ``.key``/``.value`` access (≈1 µs per attribute with upb), which made
attribute conversion most of the Elasticsearch exporter's cost. On the wire a
``KeyValue`` (``key = 1``, ``value = 2``) is exactly a protobuf map entry, so this
module declares, in a private descriptor pool, the same request with
``LogRecord.attributes`` as ``map<string, bytes>``: upb parses the very same bytes,
and ``dict(record.attributes)`` hands over ``{key: AnyValue bytes}`` in C. The common
``AnyValue`` kinds (string, bool, int, double) are then read straight from those
bytes; arrays, maps and bytes go through the real ``AnyValue`` message.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from ..otlp_values import any_to_python

__all__ = ["LiteLogsRequest", "any_bytes_to_python"]

_UNPACK_DOUBLE = struct.Struct("<d").unpack_from


def _file_proto(module: Any) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)
    return proto


def _build() -> type:
    pool = descriptor_pool.DescriptorPool()
    for module in (common_pb2, resource_pb2):
        pool.Add(_file_proto(module))
    logs = _file_proto(logs_pb2)
    record = next(m for m in logs.message_type if m.name == "LogRecord")
    entry = record.nested_type.add(name="AttributesEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=1)
    entry.field.add(name="value", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES, label=1)
    attributes = next(f for f in record.field if f.name == "attributes")
    attributes.type_name = ".opentelemetry.proto.logs.v1.LogRecord.AttributesEntry"
    pool.Add(logs)
    pool.Add(_file_proto(logs_service_pb2))
    return GetMessageClass(pool.FindMessageTypeByName("opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest"))


#: ``ExportLogsServiceRequest`` with ``LogRecord.attributes`` as ``map<string, bytes>``.
LiteLogsRequest = _build()


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def any_bytes_to_python(data: bytes) -> Any:
    """A serialized ``AnyValue`` as a JSON-friendly Python value (as ``any_to_python``)."""
    if not data:
        return None
    tag = data[0]
    try:
        if tag == 0x0A:  # string_value
            length, start = _varint(data, 1)
            if start + length == len(data):
                return data[start : start + length].decode("utf-8", "replace")
        elif tag == 0x10:  # bool_value
            value, end = _varint(data, 1)
            if end == len(data):
                return value != 0
        elif tag == 0x18:  # int_value (int64, two's complement)
            value, end = _varint(data, 1)
            if end == len(data):
                return value - (1 << 64) if value >= 1 << 63 else value
        elif tag == 0x21 and len(data) == 9:  # double_value
            number = _UNPACK_DOUBLE(data, 1)[0]
            if math.isfinite(number):
                return number
    except IndexError:
        pass
    return any_to_python(AnyValue.FromString(data))
