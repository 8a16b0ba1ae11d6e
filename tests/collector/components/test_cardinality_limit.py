"""The per-metric series limit (``cardinality_limit``) of the prometheus and prometheusremotewrite exporters.

A cardinality burst in one metric must not grow the collector without bound: beyond
the limit, new label sets go into the metric's one ``otel_metric_overflow="true"``
series, whose value adds up what they carried (as the OpenTelemetry SDK's overflow
point does), and the overflowed points are counted and logged.
"""

from __future__ import annotations

import logging
import time
import uuid

import httpx
import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from meshwatch.collector.exporters import prometheus as prom
from meshwatch.collector.exporters import prometheusremotewrite as prw
from meshwatch.collector.exporters._prom_store import SeriesStore
from meshwatch.collector.signals import Signal
from meshwatch.stack.testing import eventually

from ._otlp import batch_of, kvs, metric, scrape_with_honor_labels, settings
from .test_prometheus_exporter import CUMULATIVE, DELTA, NS, request

OVERFLOW = ("otel_metric_overflow", "true")


def wide_counter(name: str, values: list[float], *, t: int, start: int, temporality: int = CUMULATIVE) -> Metric:
    """One counter with a point per value, each with its own ``user.id`` label value."""
    m = Metric(name=name, unit="1", description=f"{name} help")
    m.sum.aggregation_temporality = temporality
    m.sum.is_monotonic = True
    for index, value in enumerate(values):
        point = m.sum.data_points.add(start_time_unix_nano=start, time_unix_nano=t, as_double=value)
        point.attributes.extend(kvs({"user.id": f"u{index}"}))
    return m


def wide_histogram(name: str, points: int, *, t: int, start: int) -> Metric:
    m = Metric(name=name, unit="s")
    m.histogram.aggregation_temporality = CUMULATIVE
    for index in range(points):
        point = m.histogram.data_points.add(
            start_time_unix_nano=start, time_unix_nano=t, count=3, sum=0.3, explicit_bounds=[0.1], bucket_counts=[2, 1]
        )
        point.attributes.extend(kvs({"user.id": f"u{index}"}))
    return m


def _series(store: SeriesStore, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``{labels: value}`` of one sample name as the store would expose it."""
    out = {}
    for family in store.families():
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _overflow_value(series: dict) -> float:
    found = [value for labels, value in series.items() if OVERFLOW in labels]
    assert len(found) == 1, f"one overflow series expected, got {len(found)}"
    return found[0]


# --- the store on its own -------------------------------------------------------------------


def test_store_caps_series_and_adds_the_rest_into_one_overflow_series() -> None:
    calls: list[tuple[str, int, int]] = []
    store = SeriesStore(cardinality_limit=10, on_overflow=lambda *args: calls.append(args))
    t0 = time.time_ns() - 10 * NS
    values = [float(i + 1) for i in range(50)]
    kept, dropped = store.fold(
        request([wide_counter("burst", values, t=t0, start=t0 - NS), wide_counter("calm", [1, 2, 3], t=t0, start=t0)])
    )
    assert kept == 53 and dropped == {}
    burst = _series(store, "burst_total")
    assert len(burst) == 10  # the limit counts the overflow series, as the OpenTelemetry SDK does
    assert _overflow_value(burst) == sum(values[9:])  # the 41 label sets beyond the first 9
    assert dict(_overflow_labels(burst)) == {"otel_metric_overflow": "true"}  # their own labels are gone
    assert sum(burst.values()) == sum(values)
    assert len(_series(store, "calm_total")) == 3  # another metric in the same request is unaffected
    assert calls == [("burst_total", 41, 10)]

    # The same cumulative totals exported again add nothing; an increase adds only the increase.
    store.fold(request([wide_counter("burst", values, t=t0 + NS, start=t0 - NS)]))
    assert _overflow_value(_series(store, "burst_total")) == sum(values[9:])
    store.fold(request([wide_counter("burst", [v + 1 for v in values], t=t0 + 2 * NS, start=t0 - NS)]))
    assert _overflow_value(_series(store, "burst_total")) == sum(values[9:]) + 41
    # Old points are refused as out of order, in the overflow series as in the 9 series of their own.
    _, dropped = store.fold(request([wide_counter("burst", values, t=t0, start=t0 - NS)]))
    assert dropped == {"out_of_order": 50}
    assert store.footprint() == (10 + 3, 41)


def test_store_overflow_of_delta_counters_and_histograms() -> None:
    store = SeriesStore(cardinality_limit=5)
    t0 = time.time_ns() - 10 * NS
    for step in range(3):
        store.fold(
            request([wide_counter("jobs", [2.0] * 20, t=t0 + step * NS, start=t0 + (step - 1) * NS, temporality=DELTA)])
        )
    assert _overflow_value(_series(store, "jobs_total")) == 3 * 16 * 2.0
    for step in range(2):  # cumulative: the second export of the same totals adds nothing
        store.fold(request([wide_histogram("latency", 12, t=t0 + step * NS, start=t0 - NS)]))
    buckets = _series(store, "latency_seconds_bucket")
    over = {dict(labels)["le"]: value for labels, value in buckets.items() if OVERFLOW in labels}
    assert over == {"0.1": 8 * 2.0, "+Inf": 8 * 3.0}
    assert _overflow_value(_series(store, "latency_seconds_count")) == 8 * 3.0


def test_overflow_series_expire_like_the_others() -> None:
    store = SeriesStore(cardinality_limit=3, expiration=60)
    now = time.time()
    t0 = time.time_ns()
    store.fold(request([wide_counter("burst", [1.0] * 10, t=t0, start=t0 - NS)]), now=now)
    assert store.footprint() == (3, 8)
    store.expire(now + 61)
    assert store.footprint() == (0, 0) and store.families() == []


def test_what_an_overflow_series_remembers_is_bounded_too() -> None:
    store = SeriesStore(cardinality_limit=3)  # remembers 100 x 3 label sets by their hash
    t0 = time.time_ns()
    _, dropped = store.fold(request([wide_counter("burst", [1.0] * 400, t=t0, start=t0 - NS)]))
    assert store.footprint() == (3, 300)
    assert dropped == {"cardinality_limit": 98}  # cumulative: the next point's increase could not be known
    assert _overflow_value(_series(store, "burst_total")) == 300.0
    # Deltas need no memory of the label set: all of them are added.
    store.fold(request([wide_counter("jobs", [1.0] * 400, t=t0, start=t0 - NS, temporality=DELTA)]))
    assert _overflow_value(_series(store, "jobs_total")) == 398.0


def test_no_limit_when_zero() -> None:
    store = SeriesStore(cardinality_limit=0)
    t0 = time.time_ns()
    store.fold(request([wide_counter("burst", [1.0] * 3000, t=t0, start=t0 - NS)]))
    assert len(_series(store, "burst_total")) == 3000


def _overflow_labels(series: dict) -> tuple:
    return next(labels for labels in series if OVERFLOW in labels)


def test_exporter_counts_overflowed_points_and_warns_once_naming_the_metric(host, telemetry, caplog) -> None:
    config = prom.PrometheusConfig(endpoint="127.0.0.1:0", cardinality_limit=10)
    exporter = prom.factory.create(settings("prometheus/limited", Signal.METRICS, telemetry=telemetry), config)
    exporter.start(host)
    caplog.set_level(logging.WARNING, logger="meshwatch.collector.exporter.prometheus")
    try:
        t0 = time.time_ns()
        for step in range(3):
            exporter.consume(
                batch_of(Signal.METRICS, request([wide_counter("burst", [1.0] * 30, t=t0 + step, start=t0 - NS)]))
            )
            exporter.drain()
    finally:
        exporter.shutdown(5)
    counted = metric(
        telemetry, "meshwatch_exporter_overflowed_points_total", exporter="prometheus/limited", signal="metrics"
    )
    assert counted == 3 * 21
    warnings = [r.getMessage() for r in caplog.records if "cardinality_limit" in r.getMessage()]
    assert len(warnings) == 1, warnings  # rate-limited: one per metric a minute
    assert "burst_total" in warnings[0] and "10" in warnings[0]


def test_config_default_and_validation() -> None:
    assert prom.PrometheusConfig().cardinality_limit == 2000
    assert prw.RemoteWriteConfig(endpoint="http://127.0.0.1:1/api/v1/write").cardinality_limit == 2000
    with pytest.raises(ValueError, match="cardinality_limit"):
        prom.PrometheusConfig(cardinality_limit=-1)


def test_remote_write_translation_caps_series_per_metric() -> None:
    config = prw.RemoteWriteConfig(endpoint="http://127.0.0.1:1/api/v1/write", cardinality_limit=10)
    limit = prw.SeriesLimit(config.cardinality_limit, config.metric_expiration)
    t0 = time.time_ns()
    overflowed: dict[str, int] = {}
    values = [float(i + 1) for i in range(50)]
    write, written, letters = prw.translate(
        request([wide_counter("burst", values, t=t0, start=t0 - NS), wide_counter("calm", [1, 2], t=t0, start=t0)]),
        config,
        limit,
        overflowed,
    )
    names = [next(lb.value for lb in s.labels if lb.name == "__name__") for s in write.timeseries]
    assert names.count("burst_total") == 9 and names.count("calm_total") == 2
    assert written == 52 and letters == [] and overflowed == {"burst_total": 41}
    pending, entries = limit.pending(40)
    (series,) = pending.timeseries
    assert {lb.name: lb.value for lb in series.labels} == {"__name__": "burst_total", "otel_metric_overflow": "true"}
    assert series.samples[0].value == sum(values[9:])
    again, _ = limit.pending(40)
    assert not again.timeseries and entries  # written once until it changes again


# --- against the real Prometheus ------------------------------------------------------------

BURST = 10_000
LIMIT = 100


def _query(prometheus, promql: str) -> list:
    response = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": promql}, timeout=10)
    return response.json()["data"]["result"]


def _burst_request(name: str, service: str, t: int):
    values = [float(i % 7 + 1) for i in range(BURST)]
    resource = {"service.name": service, "service.instance.id": "i-1"}
    req = request(
        [
            wide_counter(f"{name}.burst", values, t=t, start=t - NS),
            wide_counter(f"{name}.calm", [5.0] * 20, t=t, start=t),
        ],
        resource=resource,
    )
    return req, values


def _check_prometheus(prometheus, name: str, selector: str, values: list[float]) -> None:
    """≤ LIMIT + 1 series for the bursting metric, one of them the overflow series with the overflowed sum."""

    def all_there() -> list:
        found = _query(prometheus, f"count({name}_burst_total{selector})")
        return found if found and float(found[0]["value"][1]) >= LIMIT else []

    count = float(eventually(all_there, timeout=60, what=f"{name}_burst_total in Prometheus")[0]["value"][1])
    assert count <= LIMIT + 1
    overflow = _query(prometheus, f'{name}_burst_total{{otel_metric_overflow="true"}}')
    assert len(overflow) == 1
    own = LIMIT - 1
    assert float(overflow[0]["value"][1]) == sum(values[own:])
    assert float(_query(prometheus, f"sum({name}_burst_total{selector})")[0]["value"][1]) == sum(values)
    calm = _query(prometheus, f"count({name}_calm_total{selector})")
    assert float(calm[0]["value"][1]) == 20  # the other metric of the same request is whole


@pytest.mark.integration
def test_prometheus_sees_at_most_limit_series_and_the_overflowed_sum(prometheus, host, telemetry) -> None:
    config = prom.PrometheusConfig(endpoint="127.0.0.1:0", cardinality_limit=LIMIT)
    exporter = prom.factory.create(settings("prometheus/burst", Signal.METRICS, telemetry=telemetry), config)
    exporter.start(host)
    name = f"card_{uuid.uuid4().hex[:6]}"
    req, values = _burst_request(name, f"svc-{name}", time.time_ns())
    exporter.consume(batch_of(Signal.METRICS, req))
    target = scrape_with_honor_labels(prometheus, f"127.0.0.1:{exporter.port}")
    try:
        _check_prometheus(prometheus, name, "", values)
    finally:
        target.unlink()
        exporter.shutdown(5)
    counted = metric(
        telemetry, "meshwatch_exporter_overflowed_points_total", exporter="prometheus/burst", signal="metrics"
    )
    assert counted == BURST - (LIMIT - 1)


@pytest.mark.integration
def test_remote_write_writes_at_most_limit_series_and_the_overflowed_sum(prometheus, host, telemetry) -> None:
    config = prw.RemoteWriteConfig(endpoint=f"{prometheus.url}/api/v1/write", cardinality_limit=LIMIT)
    sender = prw.RemoteWriteSender(config, telemetry, "prometheusremotewrite/burst")
    sender.start(host)
    name = f"rwcard_{uuid.uuid4().hex[:6]}"
    req, values = _burst_request(name, f"svc-{name}", time.time_ns())
    try:
        result = sender.send(batch_of(Signal.METRICS, req))
        assert result.rejected == 0
        _check_prometheus(prometheus, name, "", values)
    finally:
        sender.shutdown()
    counted = metric(
        telemetry,
        "meshwatch_exporter_overflowed_points_total",
        exporter="prometheusremotewrite/burst",
        signal="metrics",
    )
    assert counted == BURST - (LIMIT - 1)
