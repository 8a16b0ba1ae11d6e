"""meshwatch's otlp exporter in front of the reference OpenTelemetry Collector, at its defaults.

The Go collector's OTLP receiver refuses a message over 4 MiB (``max_recv_msg_size_mib: 4``).
meshwatch merges queued requests into one send of up to ``batch.max_bytes``; at the old
default of 8 MiB a backlog produced sends the reference refused, which the exporter kept
retrying, so its queue stalled for good. The default now stays under 4 MiB.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshwatch.collector.testing import free_port, scrape
from meshwatch.stack.testing import eventually

from ._otlp import span, traces
from .test_kafka_interop import otelcol

pytestmark = pytest.mark.integration


def _big_request(spans: int = 100) -> bytes:
    """About 300 KiB: 100 spans with a 3 KiB attribute each."""
    request: ExportTraceServiceRequest = traces(
        {"service.name": "backlog"}, [span(attributes={"payload": "x" * 3000}) for _ in range(spans)]
    )
    return request.SerializeToString()


def _reference(grpc_port: int) -> dict[str, Any]:
    """The reference collector at its defaults: OTLP/gRPC in (4 MiB limit), ``nop`` out."""
    return {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"}}}},
        "exporters": {"nop": {}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["nop"]}}},
    }


def _post(collector: Any, body: bytes) -> None:
    request = urllib.request.Request(
        f"{collector.http_url}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def _accepted(metrics_url: str) -> float:
    return sum(v for (name, _), v in scrape(metrics_url).items() if name == "otelcol_receiver_accepted_spans_total")


def test_a_backlog_reaches_the_reference_collector_at_its_default_message_limit(
    collector_factory: Any, tmp_path: Path
) -> None:
    grpc_port, metrics = free_port(), free_port()
    reference = _reference(grpc_port)
    with otelcol(reference, tmp_path / "otelcol", metrics_port=metrics):
        collector = collector_factory(
            {
                "exporters": {
                    "otlp/reference": {
                        "endpoint": f"127.0.0.1:{grpc_port}",
                        "tls": {"insecure": True},
                        # a backlog: everything queued in 2 s goes out merged
                        "batch": {"linger": "2s"},
                    }
                },
                "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/reference"]}}},
            }
        )
        body = _big_request()
        assert len(body) > 250_000
        for _ in range(30):  # ≈ 9 MiB queued within the linger
            _post(collector, body)
        metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        eventually(lambda: _accepted(metrics_url) >= 3000, timeout=60, what="all 3000 spans at the reference")
        assert _accepted(metrics_url) == 3000
        assert collector.metric("meshwatch_exporter_failed_items_total") == 0, collector.log_tail()


def test_a_request_over_the_references_limit_is_dead_lettered_and_the_rest_flows(
    collector_factory: Any, tmp_path: Path
) -> None:
    """One 5 MiB request (the reference accepts 4): refused every time, so it must not stall the queue."""
    grpc_port, metrics = free_port(), free_port()
    reference = _reference(grpc_port)
    with otelcol(reference, tmp_path / "otelcol", metrics_port=metrics):
        collector = collector_factory(
            {
                "exporters": {"otlp/reference": {"endpoint": f"127.0.0.1:{grpc_port}", "tls": {"insecure": True}}},
                "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/reference"]}}},
            }
        )
        huge = traces({"service.name": "huge"}, [span(attributes={"payload": "x" * (5 << 20)})]).SerializeToString()
        for body in (huge, _big_request(), _big_request()):
            _post(collector, body)
        metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        eventually(lambda: _accepted(metrics_url) >= 200, timeout=60, what="the 200 spans sent after the huge one")
        assert _accepted(metrics_url) == 200
        eventually(
            lambda: collector.metric("meshwatch_exporter_dropped_items_total", reason="rejected") == 1,
            timeout=30,
            what="the huge span dead-lettered and counted",
        )
