"""Zero code: three unmodified services under ``meshwatch-run``, checked in the real Jaeger and Prometheus.

shop (FastAPI, ``uvicorn --workers 2``: spawned workers) calls inventory (Flask,
``gunicorn -w 2``: forked workers) with Jaeger ``uber-trace-id`` propagation only,
and pricing (FastAPI) with W3C ``traceparent``. Traces go to Jaeger over OTLP/gRPC,
metrics to Prometheus' OTLP receiver over OTLP/HTTP, logs are JSON lines on stdout.
"""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from meshwatch.stack import free_port
from meshwatch.stack.testing import eventually

from ._helpers import (
    Service,
    base_env,
    get_json,
    jaeger_trace,
    parent_id,
    process_tags,
    prom_query,
    prom_value,
    span_tags,
    start,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mesh(jaeger: Any, prometheus: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    workdir: Path = tmp_path_factory.mktemp("mesh")
    suffix = uuid.uuid4().hex[:6]
    common = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": jaeger.urls["otlp_grpc"],
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{prometheus.url}/api/v1/otlp/v1/metrics",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_LOGS_EXPORTER": "none",  # Jaeger takes traces only; the JSON lines on stdout are checked
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "MESHWATCH_ENVIRONMENT": "test",
    }
    services: dict[str, Service] = {}
    try:
        port = free_port()
        services["pricing"] = start(
            "pricing",
            ["meshwatch-run", "uvicorn", "pricing:app", "--port", str(port)],
            base_env(**common, OTEL_SERVICE_NAME=f"pricing-{suffix}"),
            workdir,
            port=port,
            ready_path="/price/1",
        )
        port = free_port()
        services["inventory"] = start(
            "inventory",
            ["meshwatch-run", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "inventory:app"],
            base_env(**common, OTEL_SERVICE_NAME=f"inventory-{suffix}", OTEL_PROPAGATORS="jaeger"),
            workdir,
            port=port,
            ready_path="/stock/1",
        )
        port = free_port()
        services["shop"] = start(
            "shop",
            ["meshwatch-run", "uvicorn", "shop:app", "--port", str(port), "--workers", "2"],
            base_env(
                **common,
                OTEL_SERVICE_NAME=f"shop-{suffix}",
                OTEL_PROPAGATORS="tracecontext,baggage,jaeger",
                INVENTORY_URL=services["inventory"].url,
                PRICING_URL=services["pricing"].url,
            ),
            workdir,
            port=port,
            ready_path="/orders/0",
        )
        yield services
    finally:
        for service in reversed(list(services.values())):
            service.stop()


def _order_line(shop: Service, order_id: int) -> dict[str, Any]:
    lines = [
        line for line in shop.lines() if line.get("message") == "order looked up" and line.get("order_id") == order_id
    ]
    return lines[-1] if lines else {}


def test_trace_spans_three_services_with_correct_parents(mesh: dict[str, Service], jaeger: Any) -> None:
    shop = mesh["shop"]
    body = get_json(f"{shop.url}/orders/41")
    # inventory understood only the Jaeger header, and received it
    assert "uber-trace-id" in body["stock"]["headers"]

    line = eventually(lambda: _order_line(shop, 41), timeout=20, what="shop's JSON log line for order 41")
    trace_id = line["trace_id"]
    assert len(trace_id) == 32 and len(line["span_id"]) == 16

    def complete() -> dict[str, Any] | None:
        trace = jaeger_trace(jaeger, trace_id)
        return trace if trace and len(trace["spans"]) >= 5 else None

    trace = eventually(complete, timeout=30, what=f"trace {trace_id} with 5 spans in Jaeger")
    spans = {s["spanID"]: s for s in trace["spans"]}
    by_name = {s["operationName"]: s for s in trace["spans"]}
    server = by_name["GET /orders/{order_id}"]
    stock = by_name["GET /stock/<int:item>"]
    price = by_name["GET /price/{item}"]
    assert process_tags(trace, server)["service.name"].startswith("shop-")
    assert process_tags(trace, stock)["service.name"].startswith("inventory-")
    assert process_tags(trace, price)["service.name"].startswith("pricing-")
    # the log line was written inside the server span
    assert line["span_id"] == server["spanID"]
    # each downstream server span is the child of one of shop's client spans, which are children of shop's server span
    for downstream in (stock, price):
        client = spans[parent_id(downstream)]
        assert span_tags(client)["span.kind"] == "client"
        assert parent_id(client) == server["spanID"]
        assert process_tags(trace, client)["service.name"].startswith("shop-")
    assert parent_id(server) is None
    tags = span_tags(server)
    assert tags["http.route"] == "/orders/{order_id}"
    assert tags["http.response.status_code"] == 200
    resource = process_tags(trace, server)
    assert resource["deployment.environment.name"] == "test"
    assert resource["telemetry.distro.name"] == "meshwatch"
    assert resource["service.instance.id"]


def test_secrets_are_redacted_in_spans_and_log_lines(mesh: dict[str, Service], jaeger: Any) -> None:
    shop = mesh["shop"]
    get_json(f"{shop.url}/orders/42")
    line = eventually(lambda: _order_line(shop, 42), timeout=20, what="log line for order 42")
    assert line["card_number"] == "[REDACTED]"
    trace = eventually(
        lambda: (t := jaeger_trace(jaeger, line["trace_id"])) and len(t["spans"]) >= 5 and t,
        timeout=30,
        what="trace of order 42",
    )
    urls = [span_tags(s).get("url.full", "") for s in trace["spans"]]
    stock_url = next(u for u in urls if "/stock/42" in u)
    assert "s3cr3t" not in stock_url and "token=[REDACTED]" in stock_url


def test_red_metrics_by_route_reach_prometheus(mesh: dict[str, Service], prometheus: Any) -> None:
    shop = mesh["shop"]
    for order_id in range(10, 16):
        get_json(f"{shop.url}/orders/{order_id}")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{shop.url}/fail", timeout=10)
    suffix = shop.lines()[0]["service"].removeprefix("shop-")
    checks = {
        f'http_server_request_duration_seconds_count{{job="shop-{suffix}",http_route="/orders/{{order_id}}",'
        f'http_request_method="GET",http_response_status_code="200"}}': 6,
        f'http_server_request_duration_seconds_count{{job="shop-{suffix}",http_route="/fail",'
        f'http_response_status_code="500"}}': 1,
        f'http_server_request_duration_seconds_count{{job="inventory-{suffix}",http_route="/stock/<int:item>"}}': 6,
        f'http_server_request_duration_seconds_count{{job="pricing-{suffix}",http_route="/price/{{item}}"}}': 6,
        f'http_client_request_duration_seconds_count{{job="shop-{suffix}",server_address="127.0.0.1"}}': 12,
        f'http_server_request_duration_seconds_bucket{{job="shop-{suffix}",le="+Inf"}}': 7,
    }
    for query, at_least in checks.items():
        eventually(
            lambda q=query, n=at_least: prom_value(prometheus, f"sum({q})") >= n,
            timeout=45,
            what=f"{query} >= {at_least} in Prometheus",
        )
    runtime = f'process_cpu_time_seconds_total{{job="shop-{suffix}",cpu_mode="user"}}'
    eventually(lambda: prom_value(prometheus, runtime) > 0, timeout=30, what="runtime CPU metric")
    eventually(
        lambda: prom_value(prometheus, f'process_memory_usage_bytes{{job="inventory-{suffix}"}}') > 1e6,
        timeout=30,
        what="runtime memory metric of the gunicorn workers",
    )


def test_error_log_line_carries_exception_and_trace(mesh: dict[str, Service]) -> None:
    shop = mesh["shop"]
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(f"{shop.url}/fail", timeout=10)
    assert failure.value.code == 500

    def failed_line() -> dict[str, Any]:
        return next((x for x in reversed(shop.lines()) if x.get("message") == "order failed"), {})

    line = eventually(failed_line, timeout=20, what="the 'order failed' JSON line")
    assert line["level"] == "ERROR"
    assert line["logger"] == "shop.orders"
    assert line["reason"] == "lookup"
    assert line["exception"]["type"] == "KeyError"
    assert "Traceback (most recent call last)" in line["exception"]["stacktrace"]
    assert len(line["trace_id"]) == 32
    assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]


def _pids(prometheus: Any, job: str) -> set[str]:
    return {r["metric"].get("process_pid", "") for r in prom_query(prometheus, f'target_info{{job="{job}"}}')}


def test_every_worker_is_instrumented(mesh: dict[str, Service], prometheus: Any) -> None:
    """gunicorn's forked workers and uvicorn's spawned workers each report with their own process identity."""
    inventory = mesh["inventory"]
    suffix = mesh["shop"].lines()[0]["service"].removeprefix("shop-")
    with ThreadPoolExecutor(8) as pool:
        seen = set()
        for _ in range(10):  # concurrent requests spread over gunicorn's two sync workers
            seen |= {str(r["pid"]) for r in pool.map(lambda _: get_json(f"{inventory.url}/stock/3"), range(16))}
            if len(seen) >= 2:
                break
    assert len(seen) == 2, f"both gunicorn workers should have answered, saw pids {seen}"
    eventually(
        lambda: seen <= _pids(prometheus, f"inventory-{suffix}"),
        timeout=45,
        what=f"target_info of both forked workers {seen} in Prometheus",
    )
    # uvicorn --workers 2: the supervisor and two spawned workers, each its own instance
    eventually(
        lambda: len(_pids(prometheus, f"shop-{suffix}")) >= 3,
        timeout=45,
        what="target_info of uvicorn's supervisor and both workers",
    )
