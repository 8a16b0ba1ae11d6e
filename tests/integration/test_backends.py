"""Proof that each real backend works from Python, the ground every other test stands on."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from elasticsearch import Elasticsearch
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from meshwatch.stack import Server, free_port
from meshwatch.stack.testing import eventually

pytestmark = pytest.mark.integration


def test_span_sent_over_otlp_is_found_in_jaeger(jaeger: Server) -> None:
    service = f"foundation-{uuid.uuid4().hex[:8]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=jaeger.urls["otlp_grpc"], insecure=True)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("meshwatch.tests")
    with tracer.start_as_current_span("checkout", attributes={"order.id": "A-17"}) as parent:
        with tracer.start_as_current_span("charge-card"):
            pass
        trace_id = format(parent.get_span_context().trace_id, "032x")
    provider.shutdown()

    def fetch() -> dict | None:
        response = httpx.get(f"{jaeger.url}/api/traces/{trace_id}", timeout=5)
        return response.json()["data"][0] if response.status_code == 200 else None

    trace = eventually(fetch, timeout=15, what=f"trace {trace_id} queryable in Jaeger")
    spans = {span["operationName"]: span for span in trace["spans"]}
    assert set(spans) == {"checkout", "charge-card"}
    child_refs = spans["charge-card"]["references"]
    assert child_refs[0]["refType"] == "CHILD_OF"
    assert child_refs[0]["spanID"] == spans["checkout"]["spanID"]
    assert trace["processes"][spans["checkout"]["processID"]]["serviceName"] == service
    tags = {t["key"]: t["value"] for t in spans["checkout"]["tags"]}
    assert tags["order.id"] == "A-17"
    services = httpx.get(f"{jaeger.url}/api/services", timeout=5).json()["data"]
    assert service in services


def test_document_indexed_with_the_official_client_is_found(elasticsearch: Server) -> None:
    client = Elasticsearch(elasticsearch.url, request_timeout=30)
    index = f"meshwatch-foundation-{uuid.uuid4().hex[:8]}"
    marker = uuid.uuid4().hex
    client.index(
        index=index,
        document={"@timestamp": "2026-11-25T12:00:00Z", "message": f"payment declined {marker}", "log.level": "error"},
        refresh="wait_for",
    )
    hits = client.search(index=index, query={"match": {"message": marker}})["hits"]
    assert hits["total"]["value"] == 1
    assert hits["hits"][0]["_source"]["log.level"] == "error"
    client.indices.delete(index=index)


def test_prometheus_scrapes_a_prometheus_client_endpoint(prometheus: Server) -> None:
    registry = CollectorRegistry()
    gauge = Gauge("meshwatch_foundation_probe", "A value the test expects Prometheus to read back", registry=registry)
    gauge.set(42.5)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prometheus.add_scrape_target("foundation-probe", f"127.0.0.1:{port}", {"job": "foundation"})

        def query() -> list:
            response = httpx.get(
                f"{prometheus.url}/api/v1/query",
                params={"query": 'meshwatch_foundation_probe{job="foundation"}'},
                timeout=5,
            )
            return response.json()["data"]["result"]

        result = eventually(query, timeout=30, what="probe gauge scraped by Prometheus")
        assert float(result[0]["value"][1]) == 42.5
        assert result[0]["metric"]["instance"] == f"127.0.0.1:{port}"
    finally:
        prometheus.remove_scrape_target("foundation-probe")
        server.shutdown()
        thread.join(timeout=5)


class _WebhookSink:
    """An on-call webhook receiver the test runs: records what Alertmanager posts."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sink.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[_WebhookSink]:
    sink = _WebhookSink()
    yield sink
    sink.close()


def test_alert_posted_to_alertmanager_reaches_the_webhook(alertmanager: Server, webhook: _WebhookSink) -> None:
    alertmanager.set_alertmanager_config(
        {
            "route": {"receiver": "oncall", "group_by": ["alertname"], "group_wait": "0s", "group_interval": "1s"},
            "receivers": [{"name": "oncall", "webhook_configs": [{"url": webhook.url, "send_resolved": True}]}],
        }
    )
    name = f"FoundationProbe{uuid.uuid4().hex[:6]}"
    alert = {
        "labels": {"alertname": name, "severity": "critical", "service": "payments"},
        "annotations": {"summary": "payments is failing"},
    }
    response = httpx.post(f"{alertmanager.url}/api/v2/alerts", json=[alert], timeout=5)
    assert response.status_code == 200, response.text

    def delivered() -> dict | None:
        for payload in webhook.received:
            for received in payload["alerts"]:
                if received["labels"]["alertname"] == name:
                    return received
        return None

    received = eventually(delivered, timeout=20, what=f"alert {name} delivered to the webhook")
    assert received["status"] == "firing"
    assert received["labels"]["service"] == "payments"
    assert received["annotations"]["summary"] == "payments is failing"
