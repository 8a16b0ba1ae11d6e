"""OTLP partial_success: when one pipeline refuses a batch for good while another took it.

Retrying would duplicate the data where it was taken, so the receiver answers success
with ``partial_success`` (rejected count and message) instead of an error. Driven
in-process through the real gRPC and HTTP transports with two pipelines, one of which
refuses (a pure-logic consumer; no backend is involved).
"""

from __future__ import annotations

import urllib.request

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import Refused
from meshwatch.collector.graph import FanOut
from meshwatch.collector.receivers._grpc import GrpcTransport
from meshwatch.collector.receivers._http import HttpTransport
from meshwatch.collector.receivers._ingest import Ingest
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry

from ._helpers import random_trace_ids, span_request


class Taker:
    def __init__(self) -> None:
        self.items = 0

    def consume(self, batch: Batch) -> None:
        self.items += batch.items


class Refuser:
    def consume(self, batch: Batch) -> None:
        raise Refused("invalid_span", "span names must not be empty in pipeline traces/b", retryable=False)


def test_partial_success_over_grpc_and_http() -> None:
    taker = Taker()
    telemetry = Telemetry()
    ingest = Ingest("otlp", {Signal.TRACES: FanOut([taker, Refuser()], [False, False])}, telemetry)
    grpc_transport = GrpcTransport(ingest, "127.0.0.1:0", max_request_bytes=1 << 20, bearer_token=None)
    http_transport = HttpTransport(
        ingest, "127.0.0.1:0", max_request_bytes=1 << 20, bearer_token=None, paths={Signal.TRACES: "/v1/traces"}
    )
    grpc_transport.start()
    http_transport.start()
    try:
        body = span_request(random_trace_ids(3))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_transport.port}") as channel:
            raw = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(body, timeout=10)
        response = ExportTraceServiceResponse.FromString(raw)
        assert response.partial_success.rejected_spans == 3
        assert "span names must not be empty" in response.partial_success.error_message

        request = urllib.request.Request(
            f"http://127.0.0.1:{http_transport.port}/v1/traces",
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
            assert ExportTraceServiceResponse.FromString(answer.read()).partial_success.rejected_spans == 3
    finally:
        grpc_transport.stop(1)
        http_transport.stop(1)
    assert taker.items == 6  # the other pipeline got both requests, once each
    refused = telemetry.registry.get_sample_value(
        "meshwatch_receiver_refused_items_total",
        {"receiver": "otlp", "transport": "grpc", "signal": "traces", "reason": "invalid_span"},
    )
    assert refused == 3
