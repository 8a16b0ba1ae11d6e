"""Spans and log records with ids the backends refuse are refused one by one at the receiver.

Driven in-process through the real gRPC and HTTP transports (protobuf and JSON) into a
consumer that records what it was handed (pure logic; what Jaeger makes of it is in
test_bad_neighbour.py). The sender sees OTLP ``partial_success`` naming the problem,
the valid items go on, the refused ones are counted under ``reason="invalid_id"``.
"""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from meshwatch.collector.batch import Batch
from meshwatch.collector.receivers._grpc import GrpcTransport
from meshwatch.collector.receivers._http import HttpTransport
from meshwatch.collector.receivers._ingest import Ingest
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry

GOOD_TRACE = bytes(range(1, 17))
GOOD_SPAN = bytes(range(1, 9))

#: (what, trace_id, span_id, parent_span_id, words in the message)
BAD_SPANS = [
    ("5-byte trace id", b"\x01\x02\x03\x04\x05", GOOD_SPAN, b"", "trace_id is 5 bytes"),
    ("empty trace id", b"", GOOD_SPAN, b"", "trace_id is empty"),
    ("zero trace id", bytes(16), GOOD_SPAN, b"", "trace_id is all zero"),
    ("7-byte span id", GOOD_TRACE, b"\x01" * 7, b"", "span_id is 7 bytes"),
    ("zero span id", GOOD_TRACE, bytes(8), b"", "span_id is all zero"),
    ("3-byte parent", GOOD_TRACE, GOOD_SPAN, b"\x01\x02\x03", "parent_span_id is 3 bytes"),
]


class Taker:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def consume(self, batch: Batch) -> None:
        self.batches.append(batch)

    def span_names(self) -> list[str]:
        request = ExportTraceServiceRequest.FromString(self.batches[-1].raw)  # what the queue would store
        return [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


@pytest.fixture
def receiver():
    taker = Taker()
    telemetry = Telemetry()
    ingest = Ingest("otlp", {Signal.TRACES: taker, Signal.LOGS: taker}, telemetry)
    grpc_transport = GrpcTransport(ingest, "127.0.0.1:0", max_request_bytes=1 << 20, bearer_token=None)
    paths = {Signal.TRACES: "/v1/traces", Signal.LOGS: "/v1/logs"}
    http_transport = HttpTransport(ingest, "127.0.0.1:0", max_request_bytes=1 << 20, bearer_token=None, paths=paths)
    grpc_transport.start()
    http_transport.start()
    yield taker, telemetry, grpc_transport, http_transport
    grpc_transport.stop(0)
    http_transport.stop(1)


def _spans_request(bad: tuple) -> ExportTraceServiceRequest:
    _, trace_id, span_id, parent, _ = bad
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for name, ids in (("good-1", (GOOD_TRACE, GOOD_SPAN, b"")), ("bad", (trace_id, span_id, parent))):
        span = spans.add()
        span.name = name
        span.trace_id, span.span_id, span.parent_span_id = ids
    good = spans.add()
    good.name, good.trace_id, good.span_id, good.parent_span_id = "good-2", GOOD_TRACE, b"\x09" * 8, GOOD_SPAN
    return request


def _refused(telemetry: Telemetry, transport: str, signal: str = "traces") -> float:
    labels = {"receiver": "otlp", "transport": transport, "signal": signal, "reason": "invalid_id"}
    return telemetry.registry.get_sample_value("meshwatch_receiver_refused_items_total", labels) or 0.0


def _http(port: int, path: str, body: bytes, ctype: str) -> bytes:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": ctype}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return response.read()


def _as_otlp_json(request: ExportTraceServiceRequest) -> bytes:
    spans = [
        {"name": s.name, "traceId": s.trace_id.hex(), "spanId": s.span_id.hex(), "parentSpanId": s.parent_span_id.hex()}
        for s in request.resource_spans[0].scope_spans[0].spans
    ]
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}).encode()


@pytest.mark.parametrize("bad", BAD_SPANS, ids=[case[0] for case in BAD_SPANS])
def test_a_bad_span_is_refused_alone_on_every_transport(receiver, bad) -> None:
    taker, telemetry, grpc_transport, http_transport = receiver
    request = _spans_request(bad)
    words = bad[4]

    with grpc.insecure_channel(f"127.0.0.1:{grpc_transport.port}") as channel:
        raw = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(
            request.SerializeToString(), timeout=10
        )
    answer = ExportTraceServiceResponse.FromString(raw)
    assert (answer.partial_success.rejected_spans, words in answer.partial_success.error_message) == (1, True), answer
    assert "'bad'" in answer.partial_success.error_message
    assert taker.span_names() == ["good-1", "good-2"]
    assert taker.batches[-1].items == 2
    assert _refused(telemetry, "grpc") == 1

    answer = ExportTraceServiceResponse.FromString(
        _http(http_transport.port, "/v1/traces", request.SerializeToString(), "application/x-protobuf")
    )
    assert answer.partial_success.rejected_spans == 1 and words in answer.partial_success.error_message
    assert taker.span_names() == ["good-1", "good-2"]

    answer = json.loads(_http(http_transport.port, "/v1/traces", _as_otlp_json(request), "application/json"))
    assert int(answer["partialSuccess"]["rejectedSpans"]) == 1, answer
    assert words in answer["partialSuccess"]["errorMessage"]
    assert taker.span_names() == ["good-1", "good-2"]
    assert _refused(telemetry, "http") == 2


def test_a_request_of_only_bad_spans_is_answered_and_nothing_is_queued(receiver) -> None:
    taker, telemetry, grpc_transport, _ = receiver
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for _ in range(3):
        spans.add(name="no ids")
    with grpc.insecure_channel(f"127.0.0.1:{grpc_transport.port}") as channel:
        raw = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(
            request.SerializeToString(), timeout=10
        )
    assert ExportTraceServiceResponse.FromString(raw).partial_success.rejected_spans == 3
    assert taker.batches == []
    assert _refused(telemetry, "grpc") == 3


def test_valid_requests_pass_as_the_very_bytes_that_came_in(receiver) -> None:
    taker, telemetry, grpc_transport, _ = receiver
    request = _spans_request(("", GOOD_TRACE, b"\x07" * 8, b"", ""))
    body = request.SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{grpc_transport.port}") as channel:
        raw = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(body, timeout=10)
    assert raw == b""
    assert taker.batches[-1].raw == body
    assert _refused(telemetry, "grpc") == 0


def test_log_records_with_wrong_id_lengths_are_refused_alone(receiver) -> None:
    taker, telemetry, _, http_transport = receiver
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    records.add().body.string_value = "no ids: fine for a log"
    records.add(trace_id=GOOD_TRACE, span_id=GOOD_SPAN).body.string_value = "both ids: fine"
    records.add(trace_id=b"\x01" * 5).body.string_value = "short trace id"
    records.add(span_id=b"\x01" * 9).body.string_value = "long span id"
    answer = ExportLogsServiceResponse.FromString(
        _http(http_transport.port, "/v1/logs", request.SerializeToString(), "application/x-protobuf")
    )
    assert answer.partial_success.rejected_log_records == 2
    assert "trace_id is 5 bytes" in answer.partial_success.error_message
    kept = ExportLogsServiceRequest.FromString(taker.batches[-1].raw)
    bodies = [r.body.string_value for r in kept.resource_logs[0].scope_logs[0].log_records]
    assert bodies == ["no ids: fine for a log", "both ids: fine"]
    assert _refused(telemetry, "http", "logs") == 2
