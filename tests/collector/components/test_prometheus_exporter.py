"""The prometheus exporter: OTLP → Prometheus translation, exposition formats, and the real Prometheus scraping it."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from meshwatch.collector.exporters import prometheus as prom
from meshwatch.collector.exporters._prom_names import GAUGE, MONOTONIC, NON_MONOTONIC, OTHER, label_name, metric_name
from meshwatch.collector.signals import Signal
from meshwatch.stack.testing import eventually

from ._otlp import batch_of, kvs, metric, scrape_with_honor_labels, settings

DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
NS = 1_000_000_000


@pytest.mark.parametrize(
    ("name", "unit", "kind", "expected"),
    [
        ("http.server.request.duration", "s", OTHER, "http_server_request_duration_seconds"),
        ("process.cpu.time", "s", MONOTONIC, "process_cpu_time_seconds_total"),
        ("process.memory.usage", "By", NON_MONOTONIC, "process_memory_usage_bytes"),
        ("process.thread.count", "{thread}", NON_MONOTONIC, "process_thread_count"),
        ("meshwatch.sdk.dropped", "1", MONOTONIC, "meshwatch_sdk_dropped_total"),
        ("cpython.gc.collections", "{collection}", MONOTONIC, "cpython_gc_collections_total"),
        ("traces.span.metrics.calls", "", MONOTONIC, "traces_span_metrics_calls_total"),
        ("traces.span.metrics.duration", "s", OTHER, "traces_span_metrics_duration_seconds"),
        ("traces_service_graph_request_total", "", MONOTONIC, "traces_service_graph_request_total"),
        ("traces_service_graph_request_server", "s", OTHER, "traces_service_graph_request_server_seconds"),
        ("system.network.io", "By/s", GAUGE, "system_network_io_bytes_per_second"),
        ("cpu.utilization", "1", GAUGE, "cpu_utilization_ratio"),
        ("latency_seconds", "s", OTHER, "latency_seconds"),
        ("2xx.count", "", MONOTONIC, "_2xx_count_total"),
    ],
)
def test_metric_names_follow_the_otel_translation(name: str, unit: str, kind: str, expected: str) -> None:
    assert metric_name(name, unit, kind) == expected


def test_label_names() -> None:
    assert label_name("http.response.status_code") == "http_response_status_code"
    assert label_name("0day") == "key_0day"
    assert label_name("a..b") == "a__b"
    assert label_name("...") == ""


# --- building requests ----------------------------------------------------------------------


def request(metrics: list[Metric], resource: dict | None = None, scope: str = "shop") -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.extend(
        kvs(
            resource
            or {
                "service.name": "checkout",
                "service.namespace": "shop",
                "service.instance.id": "pod-1",
                "deployment.environment.name": "test",
                "host.name": "node-7",
            }
        )
    )
    sm = rm.scope_metrics.add()
    sm.scope.name = scope
    sm.scope.version = "1.2"
    sm.metrics.extend(metrics)
    return req


def counter(name: str, value: float, *, t: int, start: int, temporality: int = CUMULATIVE, attrs=None) -> Metric:
    m = Metric(name=name, unit="1", description=f"{name} help")
    m.sum.aggregation_temporality = temporality
    m.sum.is_monotonic = True
    p = m.sum.data_points.add(start_time_unix_nano=start, time_unix_nano=t, as_double=value)
    p.attributes.extend(kvs(attrs or {"http.request.method": "GET"}))
    return m


def histogram(name: str, counts: list[int], *, t: int, start: int, temporality: int = CUMULATIVE, exemplar=None):
    m = Metric(name=name, unit="s", description="request duration")
    m.histogram.aggregation_temporality = temporality
    p = m.histogram.data_points.add(
        start_time_unix_nano=start,
        time_unix_nano=t,
        count=sum(counts),
        sum=0.1 * sum(counts),
        explicit_bounds=[0.05, 0.1, 0.5],
        bucket_counts=counts,
    )
    p.attributes.extend(kvs({"http.route": "/pay"}))
    if exemplar:
        trace_id, span_id, value = exemplar
        p.exemplars.add(trace_id=trace_id, span_id=span_id, as_double=value, time_unix_nano=t)
    return m


@pytest.fixture
def exporter(host, telemetry) -> Iterator[prom.PrometheusExporter]:
    config = prom.PrometheusConfig(endpoint="127.0.0.1:0")
    exp = prom.factory.create(settings("prometheus", Signal.METRICS, telemetry=telemetry), config)
    exp.start(host)
    yield exp
    exp.shutdown(5)


def scrape(exp: prom.PrometheusExporter, openmetrics: bool = False) -> str:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    response = httpx.get(f"http://127.0.0.1:{exp.port}/metrics", headers=headers, timeout=10)
    response.raise_for_status()
    return response.text


def test_text_exposition_with_target_info_job_instance_and_histograms(exporter, host, telemetry) -> None:
    now = time.time_ns()
    exporter.consume(
        batch_of(
            Signal.METRICS,
            request(
                [
                    counter("orders.placed", 3, t=now, start=now - NS),
                    histogram("pay.dur", [1, 2, 0, 1], t=now, start=now - NS),
                ]
            ),
        )
    )
    text = scrape(exporter)
    labels = (
        'http_request_method="GET",instance="pod-1",job="shop/checkout",otel_scope_name="shop",otel_scope_version="1.2"'
    )
    assert f"orders_placed_total{{{labels}}} 3.0" in text
    assert "# TYPE orders_placed_total counter" in text
    assert (
        'target_info{deployment_environment_name="test",host_name="node-7",instance="pod-1",job="shop/checkout"} 1.0'
        in text
    )
    hist = 'http_route="/pay",instance="pod-1",job="shop/checkout"'
    assert f'pay_dur_seconds_bucket{{{hist},le="0.05",otel_scope_name="shop",otel_scope_version="1.2"}} 1.0' in text
    assert f'pay_dur_seconds_bucket{{{hist},le="0.1",otel_scope_name="shop",otel_scope_version="1.2"}} 3.0' in text
    assert f'pay_dur_seconds_bucket{{{hist},le="+Inf",otel_scope_name="shop",otel_scope_version="1.2"}} 4.0' in text
    assert f'pay_dur_seconds_count{{{hist},otel_scope_name="shop",otel_scope_version="1.2"}} 4.0' in text
    assert metric(telemetry, "meshwatch_exporter_sent_items_total", exporter="prometheus", signal="metrics") == 2


def test_delta_counters_and_histograms_accumulate_and_resends_do_not_double(exporter, host, telemetry) -> None:
    t0 = time.time_ns() - 10 * NS
    for step in range(3):
        start, end = t0 + step * NS, t0 + (step + 1) * NS
        exporter.consume(
            batch_of(
                Signal.METRICS,
                request(
                    [
                        counter("jobs.done", 2, t=end, start=start, temporality=DELTA),
                        histogram("job.dur", [1, 0, 1, 0], t=end, start=start, temporality=DELTA),
                    ]
                ),
            )
        )
    # the last delta again (a resend): must be ignored and counted
    exporter.consume(
        batch_of(
            Signal.METRICS, request([counter("jobs.done", 2, t=t0 + 3 * NS, start=t0 + 2 * NS, temporality=DELTA)])
        )
    )
    families = {f.name: f for f in text_string_to_metric_families(scrape(exporter, openmetrics=True))}
    assert [s.value for s in families["jobs_done"].samples if s.name == "jobs_done_total"] == [6.0]
    buckets = {s.labels["le"]: s.value for s in families["job_dur_seconds"].samples if s.name.endswith("_bucket")}
    assert buckets == {"0.05": 3.0, "0.1": 3.0, "0.5": 6.0, "+Inf": 6.0}
    assert (
        metric(
            telemetry,
            "meshwatch_exporter_dropped_items_total",
            exporter="prometheus",
            signal="metrics",
            reason="out_of_order",
        )
        == 1
    )


def test_openmetrics_carries_exemplars_on_buckets(exporter) -> None:
    now = time.time_ns()
    trace_id, span_id = os.urandom(16), os.urandom(8)
    exporter.consume(
        batch_of(
            Signal.METRICS,
            request([histogram("ex.dur", [0, 1, 0, 0], t=now, start=now - NS, exemplar=(trace_id, span_id, 0.07))]),
        )
    )
    families = {f.name: f for f in text_string_to_metric_families(scrape(exporter, openmetrics=True))}
    bucket = next(
        s for s in families["ex_dur_seconds"].samples if s.name.endswith("_bucket") and s.labels["le"] == "0.1"
    )
    assert bucket.exemplar is not None
    assert bucket.exemplar.labels == {"trace_id": trace_id.hex(), "span_id": span_id.hex()}
    assert bucket.exemplar.value == pytest.approx(0.07)
    assert "# {" not in scrape(exporter)  # the classic text format carries no exemplars


def test_gauges_summaries_exponential_histograms_and_type_conflicts(exporter, host, telemetry) -> None:
    now = time.time_ns()
    gauge = Metric(name="queue.depth", unit="{item}")
    gauge.gauge.data_points.add(time_unix_nano=now, as_int=42)
    updown = Metric(name="pool.active", unit="{connection}")
    updown.sum.aggregation_temporality = DELTA
    updown.sum.is_monotonic = False
    updown.sum.data_points.add(start_time_unix_nano=now - NS, time_unix_nano=now, as_int=5)
    updown.sum.data_points.add(start_time_unix_nano=now, time_unix_nano=now + 1, as_int=-2)
    summary = Metric(name="rpc.latency", unit="ms")
    sp = summary.summary.data_points.add(time_unix_nano=now, count=10, sum=55.0)
    sp.quantile_values.add(quantile=0.5, value=4.0)
    sp.quantile_values.add(quantile=0.99, value=9.0)
    exp = Metric(name="size", unit="By")
    exp.exponential_histogram.aggregation_temporality = CUMULATIVE
    ep = exp.exponential_histogram.data_points.add(time_unix_nano=now, count=6, sum=30.0, scale=0, zero_count=1)
    ep.positive.offset = 1  # buckets (2,4], (4,8], (8,16]
    ep.positive.bucket_counts.extend([2, 0, 3])
    clash = Metric(name="queue.depth", unit="{item}")  # same Prometheus name, now a histogram: refused
    clash.histogram.aggregation_temporality = CUMULATIVE
    clash.histogram.data_points.add(time_unix_nano=now, count=1, bucket_counts=[1])
    exporter.consume(batch_of(Signal.METRICS, request([gauge, updown, summary, exp])))
    exporter.consume(batch_of(Signal.METRICS, request([clash])))
    text = scrape(exporter)
    assert "# TYPE queue_depth gauge" in text and "queue_depth{" in text and "} 42.0" in text
    pool_active = [line for line in text.splitlines() if line.startswith("pool_active{") and 'instance="pod-1"' in line]
    assert len(pool_active) == 1 and float(pool_active[0].rsplit(" ", 1)[1]) == 3.0  # delta up-down: 5 - 2
    ident = 'instance="pod-1",job="shop/checkout"'
    scope = 'otel_scope_name="shop",otel_scope_version="1.2"'
    assert f'rpc_latency_milliseconds{{{ident},{scope},quantile="0.99"}} 9.0' in text
    assert 'rpc_latency_milliseconds_count{instance="pod-1"' in text
    assert f'size_bytes_bucket{{{ident},le="0",{scope}}} 1.0' in text
    assert 'le="4",otel_scope_name="shop",otel_scope_version="1.2"} 3.0' in text
    assert 'le="8",otel_scope_name="shop",otel_scope_version="1.2"} 3.0' in text
    assert 'le="16",otel_scope_name="shop",otel_scope_version="1.2"} 6.0' in text
    assert (
        metric(
            telemetry,
            "meshwatch_exporter_dropped_items_total",
            exporter="prometheus",
            signal="metrics",
            reason="type_conflict",
        )
        == 1
    )


def test_stale_series_expire() -> None:
    from meshwatch.collector.exporters._prom_store import SeriesStore

    store = SeriesStore(expiration=300)
    now = time.time_ns()
    store.fold(request([counter("old.one", 1, t=now, start=now - NS)]), now=1000.0)
    store.fold(request([counter("new.one", 1, t=now, start=now - NS)]), now=1200.0)
    assert store.expire(now=1350.0) == 1
    names = {f.name for f in store.families()}
    assert names == {"target_info", "new_one"}
    assert store.expire(now=2000.0) == 1
    assert store.families() == []


def test_resource_to_telemetry_conversion_and_namespace() -> None:
    from meshwatch.collector.exporters._prom_store import SeriesStore

    store = SeriesStore(resource_to_telemetry=True, namespace="acme", without_scope_info=True)
    now = time.time_ns()
    store.fold(request([counter("hits", 1, t=now, start=now - NS)]))
    family = next(f for f in store.families() if f.name == "acme_hits")
    assert family.samples[0].labels == {
        "http_request_method": "GET",
        "service_name": "checkout",
        "service_namespace": "shop",
        "service_instance_id": "pod-1",
        "deployment_environment_name": "test",
        "host_name": "node-7",
        "job": "shop/checkout",
        "instance": "pod-1",
    }


def test_bad_endpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        prom.PrometheusConfig(endpoint="localhost")
    assert prom.PrometheusConfig(metric_expiration="2m").metric_expiration == 120.0


# --- against the real Prometheus ------------------------------------------------------------


def _query(prometheus, promql: str) -> list:
    response = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": promql}, timeout=10)
    return response.json()["data"]["result"]


@pytest.mark.integration
def test_prometheus_scrapes_translated_series(prometheus, exporter) -> None:
    service = f"svc-{uuid.uuid4().hex[:6]}"
    resource = {"service.name": service, "service.instance.id": "i-1", "deployment.environment.name": "it"}
    t0 = time.time_ns() - 5 * NS
    for step in range(2):
        exporter.consume(
            batch_of(
                Signal.METRICS,
                request(
                    [
                        counter("it.jobs", 4, t=t0 + (step + 1) * NS, start=t0 + step * NS, temporality=DELTA),
                        histogram("it.dur", [1, 1, 1, 1], t=t0 + (step + 1) * NS, start=t0),
                    ],
                    resource=resource,
                ),
            )
        )
    target = scrape_with_honor_labels(prometheus, f"127.0.0.1:{exporter.port}")
    try:
        result = eventually_query(prometheus, f'it_jobs_total{{job="{service}"}}')
        assert float(result[0]["value"][1]) == 8.0  # two deltas of 4
        assert result[0]["metric"]["instance"] == "i-1"
        info = eventually_query(prometheus, f'target_info{{job="{service}"}}')
        assert info[0]["metric"]["deployment_environment_name"] == "it"
        buckets = eventually_query(prometheus, f'it_dur_seconds_bucket{{job="{service}"}}')
        assert {b["metric"]["le"] for b in buckets} == {"0.05", "0.1", "0.5", "+Inf"}
        quantile = eventually_query(
            prometheus, f'histogram_quantile(0.5, sum by (le) (it_dur_seconds_bucket{{job="{service}"}}))'
        )
        assert 0.05 <= float(quantile[0]["value"][1]) <= 0.1
    finally:
        target.unlink()


def eventually_query(prometheus, promql: str) -> list:
    return eventually(lambda: _query(prometheus, promql), timeout=45, what=f"{promql} in Prometheus")


@pytest.mark.integration
def test_exemplars_reach_prometheus_query_exemplars(prometheus, exporter) -> None:
    now = time.time_ns()
    trace_id, span_id = os.urandom(16), os.urandom(8)
    name = f"exm_{uuid.uuid4().hex[:6]}"
    exporter.consume(
        batch_of(
            Signal.METRICS,
            request(
                [histogram(f"{name}.dur", [0, 1, 0, 0], t=now, start=now - NS, exemplar=(trace_id, span_id, 0.07))]
            ),
        )
    )
    target = scrape_with_honor_labels(prometheus, f"127.0.0.1:{exporter.port}")

    def exemplars() -> list:
        response = httpx.get(
            f"{prometheus.url}/api/v1/query_exemplars",
            params={"query": f"{name}_dur_seconds_bucket", "start": time.time() - 300, "end": time.time() + 60},
            timeout=10,
        )
        return response.json()["data"]

    try:
        found = eventually(exemplars, timeout=45, what="the exemplar in /api/v1/query_exemplars")
    finally:
        target.unlink()
    exemplar = found[0]["exemplars"][0]
    assert exemplar["labels"] == {"trace_id": trace_id.hex(), "span_id": span_id.hex()}
    assert float(exemplar["value"]) == pytest.approx(0.07)
    assert found[0]["seriesLabels"]["le"] == "0.1"
