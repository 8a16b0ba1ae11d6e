"""Prometheus remote-write 1.0 protobuf messages (``prometheus.WriteRequest``), built at
import from a hand-written descriptor of the small schema (prompb/types.proto and
remote.proto, the fields remote-write 1.0 uses), so no generated code is vendored."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass

__all__ = ["WriteRequest", "TimeSeries", "Label", "Sample", "Exemplar"]

_F = descriptor_pb2.FieldDescriptorProto


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    *,
    repeated: bool = False,
    type_name: str = "",
) -> None:
    field = message.field.add(name=name, number=number, type=kind)
    field.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name:
        field.type_name = type_name


def _build() -> descriptor_pool.DescriptorPool:
    file = descriptor_pb2.FileDescriptorProto(
        name="meshwatch/prompb_remote.proto", package="prometheus", syntax="proto3"
    )
    label = file.message_type.add(name="Label")
    _field(label, "name", 1, _F.TYPE_STRING)
    _field(label, "value", 2, _F.TYPE_STRING)
    sample = file.message_type.add(name="Sample")
    _field(sample, "value", 1, _F.TYPE_DOUBLE)
    _field(sample, "timestamp", 2, _F.TYPE_INT64)
    exemplar = file.message_type.add(name="Exemplar")
    _field(exemplar, "labels", 1, _F.TYPE_MESSAGE, repeated=True, type_name=".prometheus.Label")
    _field(exemplar, "value", 2, _F.TYPE_DOUBLE)
    _field(exemplar, "timestamp", 3, _F.TYPE_INT64)
    series = file.message_type.add(name="TimeSeries")
    _field(series, "labels", 1, _F.TYPE_MESSAGE, repeated=True, type_name=".prometheus.Label")
    _field(series, "samples", 2, _F.TYPE_MESSAGE, repeated=True, type_name=".prometheus.Sample")
    _field(series, "exemplars", 3, _F.TYPE_MESSAGE, repeated=True, type_name=".prometheus.Exemplar")
    request = file.message_type.add(name="WriteRequest")
    _field(request, "timeseries", 1, _F.TYPE_MESSAGE, repeated=True, type_name=".prometheus.TimeSeries")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool


_POOL = _build()
Label = GetMessageClass(_POOL.FindMessageTypeByName("prometheus.Label"))
Sample = GetMessageClass(_POOL.FindMessageTypeByName("prometheus.Sample"))
Exemplar = GetMessageClass(_POOL.FindMessageTypeByName("prometheus.Exemplar"))
TimeSeries = GetMessageClass(_POOL.FindMessageTypeByName("prometheus.TimeSeries"))
WriteRequest = GetMessageClass(_POOL.FindMessageTypeByName("prometheus.WriteRequest"))
