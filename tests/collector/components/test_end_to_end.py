"""Through a real meshwatch-collector process: OTLP in, the real Elasticsearch and Prometheus out."""

from __future__ import annotations

import os
import time
import uuid

import grpc
import httpx
import pytest
from elasticsearch import Elasticsearch
from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import LogsServiceStub
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from meshwatch.collector.testing import free_port
from meshwatch.stack.testing import eventually

from ._otlp import logs, scrape_with_honor_labels, span, traces

pytestmark = pytest.mark.integration


def _pipeline(signal: str, exporters: list[str], receivers: list[str] | None = None) -> dict:
    return {signal: {"receivers": receivers or ["otlp"], "exporters": exporters}}


def test_otlp_logs_become_documents_in_elasticsearch(collector_factory, elasticsearch) -> None:
    prefix = f"mwe2e-{uuid.uuid4().hex[:8]}"
    collector = collector_factory(
        {
            "exporters": {
                "elasticsearch": {
                    "endpoints": [elasticsearch.url],
                    "index_prefix": prefix,
                    "sending_queue": {"fsync": "never"},
                }
            },
            "processors": {"redaction": {}},
            "service": {
                "pipelines": {
                    "logs": {"receivers": ["otlp"], "processors": ["redaction"], "exporters": ["elasticsearch"]}
                }
            },
        }
    )
    marker = uuid.uuid4().hex
    trace_id = os.urandom(16)
    request = logs(
        {"service.name": "e2e-logs", "service.instance.id": "i-1"},
        [
            {
                "body": f"checkout {i} {marker}",
                "severity_text": "INFO",
                "trace_id": trace_id,
                "attributes": {"db.password": "pw"},
            }
            for i in range(20)
        ],
    )
    with grpc.insecure_channel(collector.grpc_endpoint) as channel:
        LogsServiceStub(channel).Export(request, timeout=10)
    client = Elasticsearch(elasticsearch.url, request_timeout=30)
    try:

        def indexed() -> int:
            client.indices.refresh(index=f"{prefix}-*", ignore_unavailable=True, allow_no_indices=True)
            return (
                client.count(index=f"{prefix}-*", query={"match": {"message": marker}}, allow_no_indices=True)["count"]
                == 20
            )

        eventually(indexed, timeout=60, what="20 log records searchable in Elasticsearch")
        hit = client.search(index=f"{prefix}-*", query={"term": {"trace.id": trace_id.hex()}}, size=1)["hits"]["hits"][
            0
        ]
        source = hit["_source"]
        assert source["service"] == {"name": "e2e-logs", "node": {"name": "i-1"}}  # ECS service.node.name
        assert source["log"]["level"] == "info"
        assert source["attributes"]["db.password"] == "***"  # redacted before it left the collector
        assert collector.metric("meshwatch_exporter_sent_items_total", exporter="elasticsearch", signal="logs") == 20
    finally:
        client.indices.delete(index=f"{prefix}-*", allow_no_indices=True)
        client.options(ignore_status=404).indices.delete_index_template(name=prefix)
        client.close()


def test_spans_become_spanmetrics_and_service_graph_series_in_prometheus(collector_factory, prometheus) -> None:
    port = free_port()
    collector = collector_factory(
        {
            "connectors": {
                "spanmetrics": {"metrics_flush_interval": "1s"},
                "servicegraph": {"metrics_flush_interval": "1s"},
            },
            "exporters": {"prometheus": {"endpoint": f"127.0.0.1:{port}"}},
            "service": {
                "pipelines": {
                    "traces": {"receivers": ["otlp"], "exporters": ["spanmetrics", "servicegraph"]},
                    "metrics": {"receivers": ["otlp", "spanmetrics", "servicegraph"], "exporters": ["prometheus"]},
                }
            },
        }
    )
    target = scrape_with_honor_labels(prometheus, f"127.0.0.1:{port}")
    front, back = f"web-{uuid.uuid4().hex[:6]}", f"api-{uuid.uuid4().hex[:6]}"
    try:
        now = time.time_ns()
        clients = [span("GET /orders", kind=Span.SPAN_KIND_CLIENT, start=now, duration=0.03) for _ in range(4)]
        servers = [
            span(
                "GET /orders",
                kind=Span.SPAN_KIND_SERVER,
                trace_id=c.trace_id,
                parent=c.span_id,
                start=now,
                duration=0.02,
            )
            for c in clients
        ]
        with grpc.insecure_channel(collector.grpc_endpoint) as channel:
            stub = TraceServiceStub(channel)
            stub.Export(traces({"service.name": front, "service.instance.id": "w1"}, clients), timeout=10)
            stub.Export(traces({"service.name": back, "service.instance.id": "a1"}, servers), timeout=10)

        def query(promql: str) -> list:
            response = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": promql}, timeout=10)
            return response.json()["data"]["result"]

        calls = eventually(
            lambda: query(f'traces_span_metrics_calls_total{{job="{back}",span_name="GET /orders"}}'),
            timeout=60,
            what="spanmetrics calls in Prometheus",
        )
        assert float(calls[0]["value"][1]) == 4 and calls[0]["metric"]["instance"] == "a1"
        edge = eventually(
            lambda: query(f'traces_service_graph_request_total{{client="{front}",server="{back}"}}'),
            timeout=60,
            what="service graph edge in Prometheus",
        )
        assert float(edge[0]["value"][1]) == 4
    finally:
        target.unlink()
