"""One line: ``meshwatch.init()`` inside a FastAPI and a Flask program, served in-process.

Metrics through the optional Prometheus ``/metrics`` endpoint, scraped by the real
Prometheus; spans in the real Jaeger; JSON log lines on stdout.
"""

from __future__ import annotations

import re
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from meshwatch.stack import free_port
from meshwatch.stack.testing import eventually

from ._helpers import base_env, get_json, jaeger_trace, parent_id, prom_value, span_tags, start

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("framework", "route"),
    [("fastapi", "/items/{item_id}"), ("flask", "/items/<int:item_id>")],
)
def test_init_in_process(framework: str, route: str, jaeger: Any, prometheus: Any, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    service_name = f"inproc-{framework}-{uuid.uuid4().hex[:6]}"
    env = base_env(
        FRAMEWORK=framework,
        PORT=str(port),
        SERVICE=service_name,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=jaeger.urls["otlp_grpc"],
        OTEL_EXPORTER_PROMETHEUS_PORT=str(metrics_port),
        OTEL_LOGS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    service = start(framework, ["python", "inproc.py"], env, tmp_path, port=port, ready_path="/items/0")
    prometheus.add_scrape_target(service_name, f"127.0.0.1:{metrics_port}", {"job": service_name})
    try:
        for item_id in range(1, 6):
            assert get_json(f"{service.url}/items/{item_id}") == {"item": item_id}

        # JSON line per record, carrying the trace of the request it was written in
        line = eventually(
            lambda: next((x for x in service.lines() if x.get("item_id") == 5), None),
            timeout=20,
            what="the JSON log line of item 5",
        )
        assert line["service"] == service_name and line["logger"] == "inproc" and line["message"] == "item served"

        trace = eventually(lambda: jaeger_trace(jaeger, line["trace_id"]), timeout=30, what="the trace in Jaeger")
        server = next(s for s in trace["spans"] if span_tags(s).get("span.kind") == "server")
        assert server["spanID"] == line["span_id"]
        assert parent_id(server) is None
        assert span_tags(server)["http.route"] == route
        assert trace["processes"][server["processID"]]["serviceName"] == service_name

        # RED metrics by route through the pull endpoint, scraped by the real Prometheus
        query = (
            f'sum(http_server_request_duration_seconds_count{{job="{service_name}",'
            f'http_route="{route}",http_response_status_code="200"}})'
        )
        eventually(lambda: prom_value(prometheus, query) >= 5, timeout=45, what=f"{query} >= 5")
        buckets = f'http_server_request_duration_seconds_bucket{{job="{service_name}"}}'
        p99 = f"histogram_quantile(0.99, sum by (le) ({buckets}))"
        assert 0 < prom_value(prometheus, p99) <= 10

        # exemplars link histogram buckets to trace ids (OpenMetrics exposition)
        request = urllib.request.Request(
            f"http://127.0.0.1:{metrics_port}/metrics", headers={"Accept": "application/openmetrics-text"}
        )
        text = urllib.request.urlopen(request, timeout=10).read().decode()
        bucket_lines = [x for x in text.splitlines() if x.startswith("http_server_request_duration_seconds_bucket")]
        exemplars = [x.split(" # ", 1)[1] for x in bucket_lines if " # {" in x]
        assert exemplars, "\n".join(bucket_lines[:5])
        assert all(re.search(r'trace_id="[0-9a-f]{32}"', e) and 'span_id="' in e for e in exemplars)
        assert "target_info{" in text and f'service_name="{service_name}"' in text
    finally:
        prometheus.remove_scrape_target(service_name)
        service.stop()
