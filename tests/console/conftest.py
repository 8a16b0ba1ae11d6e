"""The console served in-process on a free loopback port, pointed at the session's real backends,
and the telemetry the console tests put into those backends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from meshwatch.dashboards.console import ConsoleConfig, ConsoleServer, make_server
from meshwatch.stack.testing import eventually, index_log_records

SERVICE = "consolesvc"
JOB = f"shop/{SERVICE}"


@pytest.fixture(scope="module")
def console(prometheus: Any, jaeger: Any, elasticsearch: Any, alertmanager: Any) -> Iterator[ConsoleServer]:
    config = ConsoleConfig(
        prometheus=prometheus.url, jaeger=jaeger.url, elasticsearch=elasticsearch.url, alertmanager=alertmanager.url
    )
    server = make_server(config, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="session")
def scraped(prometheus: Any, sent_trace: str) -> Iterator[None]:
    """Series the session's Prometheus scrapes every second under this test's own job: a counter, and
    HTTP server durations with target_info in the telemetry contract's shape (what the dashboards read),
    whose 5xx samples have the sent trace as exemplar."""
    registry = CollectorRegistry()
    requests = Counter("console_test_requests", "Requests.", ("route",), registry=registry)
    durations = Histogram(
        "http_server_request_duration_seconds",
        "Duration of HTTP server requests.",
        ("http_request_method", "http_route", "http_response_status_code", "url_scheme"),
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
        registry=registry,
    )
    Gauge("target_info", "Target metadata", ("deployment_environment_name",), registry=registry).labels(
        "consoletest"
    ).set(1)
    stop = threading.Event()

    def traffic() -> None:
        while not stop.wait(0.1):
            requests.labels("/pay").inc()
            durations.labels("POST", "/pay", "200", "http").observe(0.02)
            # The slow failures carry the sent trace as their exemplar (OpenMetrics, which Prometheus 3 asks for).
            durations.labels("POST", "/pay", "500", "http").observe(0.3, exemplar={"trace_id": sent_trace})

    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    threading.Thread(target=traffic, daemon=True).start()
    prometheus.add_scrape_target("console-live", f"127.0.0.1:{server.server_address[1]}", {"job": JOB})
    try:
        eventually(
            lambda: httpx.get(
                f"{prometheus.url}/api/v1/query",
                params={"query": f'rate(console_test_requests_total{{job="{JOB}"}}[5s])'},
                timeout=5,
            ).json()["data"]["result"],
            timeout=60,
            what="Prometheus scrapes the test counter",
        )
        yield
    finally:
        stop.set()
        prometheus.remove_scrape_target("console-live")
        server.shutdown()


@pytest.fixture(scope="session")
def sent_trace(jaeger: Any) -> str:
    """A two-span trace of SERVICE in Jaeger: the child failed with an exception event. Its hex id."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=jaeger.urls["otlp_grpc"], insecure=True)))
    tracer = provider.get_tracer("console-test")
    with tracer.start_as_current_span("POST /pay", kind=trace.SpanKind.SERVER) as root:
        root.set_attribute("http.route", "/pay")
        with tracer.start_as_current_span("charge card") as child:
            time.sleep(0.02)
            child.add_event("card declined", {"card.brand": "visa"})
            child.set_status(Status(StatusCode.ERROR, "declined"))
    trace_id = format(root.get_span_context().trace_id, "032x")
    provider.shutdown()
    eventually(
        lambda: httpx.get(f"{jaeger.url}/api/traces/{trace_id}", timeout=5).status_code == 200,
        what="Jaeger has the test trace",
    )
    return trace_id


@pytest.fixture(scope="session")
def logged(elasticsearch: Any, sent_trace: str) -> str:
    """Three records of SERVICE in an index of this test's own; the error one carries the trace id."""
    now = datetime.now(UTC).isoformat()
    docs = [
        {"message": "payment accepted", "log.level": "info", "trace.id": "0" * 31 + "1"},
        {"message": "card declined by issuer", "log.level": "error", "trace.id": sent_trace},
        {"message": "retrying payment", "log.level": "warn", "trace.id": "0" * 31 + "2"},
    ]
    index = index_log_records(
        elasticsearch, "consoletest", [{"@timestamp": now, "service.name": SERVICE, **d} for d in docs]
    )
    return index


@pytest.fixture(scope="module")
def alert_rules(prometheus: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One always-firing and one always-pending rule, added beside the rules already loaded."""
    rules_dir = Path(prometheus.workdir) / "rules"
    before = {p.name: p.read_bytes() for p in rules_dir.iterdir()}
    keep = tmp_path_factory.mktemp("rules-before")
    for name, content in before.items():
        (keep / name).write_bytes(content)
    ours = tmp_path_factory.mktemp("rules") / "console-test.yml"
    group = {
        "groups": [
            {
                "name": "console-test",
                "rules": [
                    {
                        "alert": "ConsoleTestFiring",
                        "expr": "vector(1)",
                        "labels": {"severity": "page", "service": SERVICE},
                        "annotations": {"summary": "always firing", "runbook_url": "https://runbooks.test/Firing.md"},
                    },
                    {
                        "alert": "ConsoleTestPending",
                        "expr": "vector(1)",
                        "for": "1h",
                        "labels": {"severity": "ticket"},
                        "annotations": {"summary": "always pending", "runbook_url": "https://runbooks.test/Pending.md"},
                    },
                ],
            }
        ]
    }
    ours.write_text(json.dumps(group))
    prometheus.set_rule_files([*(keep / n for n in before), ours])
    try:
        yield
    finally:
        prometheus.set_rule_files([keep / n for n in before])
