"""What the OTLP exporters share: reading ``partial_success`` from an export response."""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from ..batch import Batch
from ..sender import SendResult
from ..signals import Signal

__all__ = ["partial_rejections", "RESPONSE_TYPES", "ENDPOINT_HINT"]

ENDPOINT_HINT = "host:port of the OTLP backend"

RESPONSE_TYPES: dict[Signal, Any] = {
    Signal.TRACES: ExportTraceServiceResponse,
    Signal.METRICS: ExportMetricsServiceResponse,
    Signal.LOGS: ExportLogsServiceResponse,
}
_FIELDS = {Signal.TRACES: "rejected_spans", Signal.METRICS: "rejected_data_points", Signal.LOGS: "rejected_log_records"}


def partial_rejections(signal: Signal, response: bytes, batch: Batch) -> SendResult:
    """``SendResult`` for a successful export whose response may carry ``partial_success``.

    OTLP does not say which items were refused, so the dead letter holds the whole
    request (replayable) with the backend's message and the refused count.
    """
    if not response:
        return SendResult()
    try:
        parsed = RESPONSE_TYPES[signal].FromString(response)
    except DecodeError:
        return SendResult()
    if not parsed.HasField("partial_success"):
        return SendResult()
    rejected = getattr(parsed.partial_success, _FIELDS[signal])
    if rejected <= 0:
        return SendResult()
    return SendResult(
        rejected=min(rejected, batch.items),
        rejected_reason="partial_success",
        dead_letters=[
            {
                "error": parsed.partial_success.error_message,
                "items": rejected,
                "request_protobuf_base64": base64.b64encode(batch.raw).decode(),
            }
        ],
    )
