"""End to end: an unmodified FastAPI service under ``meshwatch-run`` → a real ``meshwatch-collector`` →
the span in the real Jaeger and the log record in the real Elasticsearch, joined by the trace id."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from meshwatch.stack import free_port
from meshwatch.stack.testing import eventually

from ._helpers import base_env, get_json, jaeger_trace, span_tags, start

pytestmark = pytest.mark.integration


def test_span_in_jaeger_and_log_in_elasticsearch_through_the_collector(
    jaeger: Any, elasticsearch: Any, tmp_path: Path
) -> None:
    from meshwatch.collector.testing import start_collector

    prefix = f"mwinstr-{uuid.uuid4().hex[:8]}"
    collector = start_collector(
        {
            "exporters": {
                "otlp/jaeger": {
                    "endpoint": jaeger.urls["otlp_grpc"].removeprefix("http://"),
                    "tls": {"insecure": True},
                    "sending_queue": {"fsync": "never"},
                },
                "elasticsearch": {
                    "endpoints": [elasticsearch.url],
                    "index_prefix": prefix,
                    "sending_queue": {"fsync": "never"},
                },
            },
            "service": {
                "pipelines": {
                    "traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger"]},
                    "logs": {"receivers": ["otlp"], "exporters": ["elasticsearch"]},
                }
            },
        },
        tmp_path / "collector",
    )
    service_name = f"e2e-{uuid.uuid4().hex[:6]}"
    port = free_port()
    service = start(
        "plain",
        ["meshwatch-run", "uvicorn", "plain:app", "--port", str(port)],
        base_env(
            OTEL_SERVICE_NAME=service_name,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{collector.grpc_endpoint}",
            OTEL_METRICS_EXPORTER="none",
            OTEL_BSP_SCHEDULE_DELAY="200",
            MESHWATCH_ENVIRONMENT="e2e",
        ),
        tmp_path,
        port=port,
        ready_path="/hello/ready",
    )
    client = Elasticsearch(elasticsearch.url, request_timeout=30)
    try:
        visitor = uuid.uuid4().hex
        assert get_json(f"{service.url}/hello/{visitor}") == {"hello": visitor}
        line = eventually(
            lambda: next((x for x in service.lines() if x.get("visitor") == visitor), None),
            timeout=20,
            what="the JSON log line on stdout",
        )
        trace_id, span_id = line["trace_id"], line["span_id"]

        trace = eventually(lambda: jaeger_trace(jaeger, trace_id), timeout=60, what="the span in Jaeger")
        server = next(s for s in trace["spans"] if s["spanID"] == span_id)
        assert server["operationName"] == "GET /hello/{name}"
        assert span_tags(server)["http.route"] == "/hello/{name}"
        assert trace["processes"][server["processID"]]["serviceName"] == service_name

        def document() -> dict[str, Any] | None:
            client.indices.refresh(index=f"{prefix}-*", ignore_unavailable=True, allow_no_indices=True)
            hits = client.search(
                index=f"{prefix}-*", query={"term": {"trace.id": trace_id}}, size=5, allow_no_indices=True
            )["hits"]["hits"]
            return next((h["_source"] for h in hits if h["_source"].get("message") == "said hello"), None)

        doc = eventually(document, timeout=90, what="the log record in Elasticsearch")
        assert doc["span"]["id"] == span_id
        assert doc["service"]["name"] == service_name
        assert doc["log"]["level"] == "info"
        assert doc["log"]["logger"] == "plain"
        assert doc["attributes"]["visitor"] == visitor
    finally:
        service.stop()
        collector.stop(timeout=20)
        client.indices.delete(index=f"{prefix}-*", allow_no_indices=True)
        client.options(ignore_status=404).indices.delete_index_template(name=prefix)
        client.close()
