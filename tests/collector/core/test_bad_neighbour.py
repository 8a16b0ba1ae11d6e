"""One bad request must not take its neighbours with it (issue 11, finding 1).

A span with a 5-byte trace id is refused by Jaeger ("invalid TraceID length") for
the whole request it travels in. Two defences, each tested against the real Jaeger:

* the receiver refuses just the bad spans (OTLP ``partial_success``) and keeps the
  rest, so what reaches the queue is what the backend takes;
* should a bad request reach the queue anyway (queued before this check existed, or
  a rule the receiver does not know), the exporter splits a merged send that the
  backend refused for good, so only the offending original request is dead-lettered.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import ComponentId, CreateSettings
from meshwatch.collector.exporters.otlp import factory as otlp_factory
from meshwatch.collector.exporters.otlphttp import factory as otlphttp_factory
from meshwatch.collector.host import CollectorHost
from meshwatch.collector.signals import Signal
from meshwatch.stack.testing import eventually

from ._helpers import jaeger_exporter, jaeger_span_count, random_trace_ids, span_request, traces_config

pytestmark = pytest.mark.integration

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
GOOD = 100


def _bad_request() -> bytes:
    """One span whose trace id is 5 bytes long: Jaeger refuses the whole request carrying it."""
    request = ExportTraceServiceRequest.FromString(span_request(random_trace_ids(1), service="bad-neighbour"))
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\x01\x02\x03\x04\x05"
    return request.SerializeToString()


def _all_in_jaeger(jaeger, trace_ids: list[bytes]) -> int:
    return sum(1 for trace_id in trace_ids if jaeger_span_count(jaeger, trace_id) == 1)


def _dead_letters(storage: Path) -> list[dict]:
    lines: list[dict] = []
    for path in sorted((storage / "deadletter").glob("*.jsonl")):
        lines.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return lines


def test_receiver_refuses_only_the_bad_span_and_every_good_trace_reaches_jaeger(collector_factory, jaeger) -> None:
    # One consumer lingering 2 s: all 101 requests are merged into one send, the worst case.
    exporter = jaeger_exporter(jaeger, sending_queue={"num_consumers": 1}, batch={"linger": "2s"})
    collector = collector_factory(traces_config(jaeger, exporter=exporter))
    trace_ids = random_trace_ids(GOOD)
    with grpc.insecure_channel(collector.grpc_endpoint) as channel:
        export = channel.unary_unary(TRACES)
        for i, trace_id in enumerate(trace_ids):
            export(span_request([trace_id], service="bad-neighbour"), timeout=10)
            if i == GOOD // 2:
                answer = ExportTraceServiceResponse.FromString(export(_bad_request(), timeout=10))
    # the bad span is refused by name, in the OTLP way, and counted
    assert answer.partial_success.rejected_spans == 1
    assert "trace_id" in answer.partial_success.error_message
    assert "16 bytes" in answer.partial_success.error_message
    refused = collector.metric(
        "meshwatch_receiver_refused_items_total", transport="grpc", signal="traces", reason="invalid_id"
    )
    assert refused == 1
    delivered = eventually(
        lambda: _all_in_jaeger(jaeger, trace_ids) == GOOD or None, timeout=30, what="all good traces in Jaeger"
    )
    assert delivered
    assert _dead_letters(collector.storage_dir) == []


@pytest.mark.parametrize("kind", ["otlp", "otlphttp"])
def test_exporter_dead_letters_only_the_request_jaeger_refuses(tmp_path: Path, jaeger, kind: str) -> None:
    """The bad request is put straight into the exporter's queue (past the receiver's check)."""
    factory = otlp_factory if kind == "otlp" else otlphttp_factory
    settings = CreateSettings(ComponentId(kind, "jaeger"), Signal.TRACES)
    common = {
        "sending_queue": {"num_consumers": 1, "fsync": "never"},
        "batch": {"linger": "1s"},
        "retry_on_failure": {"initial_interval": "50ms", "max_interval": "200ms"},
    }
    http = {"endpoint": jaeger.urls["otlp_http"], **common}
    config = factory.config_model.model_validate(jaeger_exporter(jaeger, **common) if kind == "otlp" else http)
    host = CollectorHost(tmp_path)
    exporter = factory.create(settings, config, None)
    exporter.start(host)
    trace_ids = random_trace_ids(GOOD)
    bad = _bad_request()
    try:
        for i, trace_id in enumerate(trace_ids):
            exporter.consume(Batch.from_bytes(Signal.TRACES, span_request([trace_id], service="bad-neighbour")))
            if i == GOOD // 2:
                exporter.consume(Batch.from_bytes(Signal.TRACES, bad))
        eventually(
            lambda: _all_in_jaeger(jaeger, trace_ids) == GOOD or None, timeout=30, what="all good traces in Jaeger"
        )
        eventually(lambda: _dead_letters(tmp_path), timeout=10, what="a dead letter")
        time.sleep(0.5)  # nothing else follows it
        letters = _dead_letters(tmp_path)
        assert len(letters) == 1, letters
        assert letters[0]["items"] == 1
        assert "TraceID" in letters[0]["error"], letters[0]["error"]  # Jaeger's own words
        assert base64.b64decode(letters[0]["request_protobuf_base64"]) == bad
        labels = {"exporter": f"{kind}/jaeger", "signal": "traces"}
        registry = host.telemetry().registry
        dropped = registry.get_sample_value("meshwatch_exporter_dropped_items_total", {**labels, "reason": "rejected"})
        assert dropped == 1
        assert registry.get_sample_value("meshwatch_exporter_sent_items_total", labels) == GOOD
    finally:
        exporter.shutdown(5)
