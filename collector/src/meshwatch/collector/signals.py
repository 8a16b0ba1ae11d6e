"""The three OTLP signals and their request types, in one table.

Everything signal-specific that the core needs (request class, how to count the
items a request carries) lives here, so the pipeline stays signal-agnostic.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["Signal", "GRPC_SERVICES", "REQUEST_TYPES", "RESPONSE_TYPES", "REJECTED_FIELDS", "count_items", "ITEM_NAMES"]


class Signal(StrEnum):
    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"


#: The OTLP/gRPC service of each signal (its method is ``/<service>/Export``), for receivers and senders alike.
GRPC_SERVICES = {
    Signal.TRACES: "opentelemetry.proto.collector.trace.v1.TraceService",
    Signal.METRICS: "opentelemetry.proto.collector.metrics.v1.MetricsService",
    Signal.LOGS: "opentelemetry.proto.collector.logs.v1.LogsService",
}


REQUEST_TYPES: dict[Signal, type[Any]] = {
    Signal.TRACES: ExportTraceServiceRequest,
    Signal.METRICS: ExportMetricsServiceRequest,
    Signal.LOGS: ExportLogsServiceRequest,
}

RESPONSE_TYPES: dict[Signal, type[Any]] = {
    Signal.TRACES: ExportTraceServiceResponse,
    Signal.METRICS: ExportMetricsServiceResponse,
    Signal.LOGS: ExportLogsServiceResponse,
}

#: The ``partial_success`` count field of each signal's export response (receivers set it,
#: exporters read it from their backend's answer).
REJECTED_FIELDS: dict[Signal, str] = {
    Signal.TRACES: "rejected_spans",
    Signal.METRICS: "rejected_data_points",
    Signal.LOGS: "rejected_log_records",
}

#: What one item of a signal is called in metrics and messages (OTel collector's words).
ITEM_NAMES: dict[Signal, str] = {
    Signal.TRACES: "spans",
    Signal.METRICS: "metric_points",
    Signal.LOGS: "log_records",
}


def count_items(signal: Signal, message: Any) -> int:
    """Spans, metric data points or log records in a decoded request."""
    if signal is Signal.TRACES:
        return sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
    if signal is Signal.LOGS:
        return sum(len(sl.log_records) for rl in message.resource_logs for sl in rl.scope_logs)
    total = 0
    for rm in message.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)  # getattr: the protobuf oneof's member
    return total
