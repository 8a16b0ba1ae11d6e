"""The shipped collector/collector.yaml, run as is against the real Jaeger, Prometheus and Elasticsearch.

Only environment variables change (the file's own ``${VAR:-default}`` references), so
this is what a user gets: the kept traces in Jaeger (a failing one; a fine one outside the
sampled share is not), spanmetrics and OTLP metrics in Prometheus,
logs in Elasticsearch, and the collector's self-telemetry scraped by Prometheus under
the contract's names.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshwatch.collector.processors._tail_policies import Probabilistic, fnv1a64
from meshwatch.collector.testing import free_port
from meshwatch.stack.testing import eventually

from ._helpers import jaeger_span_count, span_request

pytestmark = pytest.mark.integration

DEFAULT_CONFIG = Path(__file__).parents[3] / "collector" / "collector.yaml"


def _prom_query(prometheus, query: str) -> list[dict]:
    url = f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["data"]["result"]


def _es_search(elasticsearch, text: str) -> list[dict]:
    body = json.dumps({"query": {"match_phrase": {"message": text}}}).encode()
    request = urllib.request.Request(
        f"{elasticsearch.url}/meshwatch-logs-*/_search", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return [hit["_source"] for hit in json.loads(response.read())["hits"]["hits"]]


def _not_in_the_sampled_share() -> bytes:
    """A trace id the shipped config's ``probabilistic`` policy (5 %) does not keep."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    rest = next(p for p in config["processors"]["tail_sampling"]["policies"] if p["type"] == "probabilistic")
    policy = Probabilistic("", rest["probabilistic"]["sampling_percentage"])
    while True:
        candidate = os.urandom(16)
        if fnv1a64(candidate, policy.state) > policy.threshold:
            return candidate


def _resource(target, service: str) -> None:
    attr = target.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", service


def test_default_config_delivers_every_signal(collector_factory, jaeger, prometheus, elasticsearch) -> None:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    exporter_port, metrics_port = free_port(), free_port()
    env = {
        "MESHWATCH_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}",
        "MESHWATCH_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{free_port()}",
        "MESHWATCH_JAEGER_OTLP_ENDPOINT": jaeger.urls["otlp_grpc"].removeprefix("http://"),
        "MESHWATCH_PROMETHEUS_EXPORTER_ENDPOINT": f"127.0.0.1:{exporter_port}",
        "MESHWATCH_ELASTICSEARCH_URL": elasticsearch.url,
        "MESHWATCH_COLLECTOR_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
    }
    for key in ("spanmetrics", "servicegraph"):
        config["connectors"][key]["metrics_flush_interval"] = "1s"  # the only change: flush fast for the test
    collector = collector_factory(config, env=env)
    prometheus.add_scrape_target("default-config-exporter", f"127.0.0.1:{exporter_port}")
    prometheus.add_scrape_target("default-config-self", f"127.0.0.1:{metrics_port}")
    service = f"default-config-{os.getpid()}"

    with grpc.insecure_channel(collector.grpc_endpoint) as channel:
        # Two traces of 5 spans: one failing (tail sampling keeps it), one fine and outside the
        # 5 % the probabilistic policy keeps (dropped). spanmetrics counts all 10 spans.
        trace_id, dropped_id = os.urandom(16), _not_in_the_sampled_share()
        traces = ExportTraceServiceRequest.FromString(
            span_request([trace_id, dropped_id], spans_per_trace=5, service=service)
        )
        traces.resource_spans[0].scope_spans[0].spans[2].status.code = 2  # STATUS_CODE_ERROR, in trace_id
        channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(
            traces.SerializeToString(), timeout=30
        )
        metrics = ExportMetricsServiceRequest()
        rm = metrics.resource_metrics.add()
        _resource(rm, service)
        metric = rm.scope_metrics.add().metrics.add()
        metric.name, metric.unit = "e2e.orders", "1"
        metric.sum.is_monotonic, metric.sum.aggregation_temporality = True, 2
        point = metric.sum.data_points.add()
        point.as_int, point.time_unix_nano = 7, time.time_ns()
        channel.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")(
            metrics.SerializeToString(), timeout=30
        )
        logs = ExportLogsServiceRequest()
        rl = logs.resource_logs.add()
        _resource(rl, service)
        record = rl.scope_logs.add().log_records.add()
        record.time_unix_nano = time.time_ns()
        record.severity_text, record.severity_number = "ERROR", 17
        record.body.string_value = f"payment declined for {service}"
        record.trace_id, record.span_id = trace_id, (1).to_bytes(8, "big")
        channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export")(
            logs.SerializeToString(), timeout=30
        )

    eventually(lambda: jaeger_span_count(jaeger, trace_id) == 5, timeout=60, what="the 5 spans in Jaeger")
    calls = eventually(
        lambda: _prom_query(prometheus, f'traces_span_metrics_calls_total{{service_name="{service}"}}'),
        timeout=90,
        what="spanmetrics series in Prometheus",
    )
    assert sum(float(r["value"][1]) for r in calls) == 10  # every span, the dropped trace's too
    assert calls[0]["metric"]["span_kind"] == "SPAN_KIND_SERVER"
    orders = eventually(lambda: _prom_query(prometheus, "e2e_orders_total"), timeout=60, what="OTLP metric")
    assert float(orders[0]["value"][1]) == 7
    docs = eventually(lambda: _es_search(elasticsearch, f"payment declined for {service}"), timeout=60, what="log")
    assert docs[0]["log"]["level"] == "error" and docs[0]["trace"]["id"] == trace_id.hex()
    accepted = eventually(
        lambda: _prom_query(prometheus, 'meshwatch_receiver_accepted_items_total{transport="grpc"}'),
        timeout=60,
        what="the collector's self-telemetry in Prometheus",
    )
    assert {r["metric"]["signal"] for r in accepted} == {"traces", "metrics", "logs"}
    assert collector.metric("meshwatch_exporter_sent_items_total", exporter="otlp/jaeger") == 5
    assert jaeger_span_count(jaeger, dropped_id) == 0  # decided (decision_wait passed) and not kept
    assert collector.metric("meshwatch_exporter_sent_items_total", exporter="elasticsearch") == 1
