"""An optional Prometheus ``/metrics`` pull endpoint, served by prometheus-client.

A pull ``MetricReader`` collects the SDK's metrics when Prometheus scrapes and
translates them exactly as the telemetry contract says (the OpenTelemetry
Collector's ``prometheus`` exporter rules): ``.`` → ``_``, unit suffix
(``_seconds``, ``_bytes``), ``_total`` on monotonic sums, histograms as
``_bucket``/``_sum``/``_count`` with trace-id exemplars in OpenMetrics, and one
``target_info`` series carrying the resource attributes. prometheus-client is
imported only when the endpoint is enabled.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    MetricReader,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.resources import Resource

__all__ = ["PrometheusEndpoint", "label_name", "prometheus_name"]

_logger = logging.getLogger("meshwatch")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")
_NAME_SPLIT = re.compile(r"[^a-zA-Z0-9:]+")
#: OTel unit → Prometheus suffix, as ``prometheus/otlptranslator`` (the OpenTelemetry Collector's
#: ``prometheus`` exporter) spells them. The collector has the same table in
#: ``meshwatch.collector.exporters._prom_names`` (the two distributions do not depend on each
#: other); ``tests/instrumentation/test_prometheus_names.py`` checks that both name every unit alike.
UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
#: How many ports after the configured one a forked worker tries (each process serves its own metrics).
_PORT_SPREAD = 64


def _clean_unit(unit: str) -> str:
    return re.sub(r"__+", "_", re.sub(r"[^a-zA-Z0-9:]", "_", unit)).lstrip("_")


def _unit_part(unit: str, table: dict[str, str], prefix: str = "") -> str:
    unit = unit.strip()
    if not unit or "{" in unit or "}" in unit:
        return ""
    return _clean_unit(prefix + table.get(unit, unit))


def prometheus_name(name: str, unit: str, *, monotonic_sum: bool, gauge: bool = False) -> str:
    """``http.server.request.duration`` + ``s`` → ``http_server_request_duration_seconds``.

    The collector's rules: the name split on characters Prometheus does not allow, the unit's
    suffix (``h`` → ``hours``, ``By/s`` → ``bytes_per_second``) unless already a token, and
    ``_ratio`` for a gauge of unit ``1``. A monotonic sum is returned without ``_total``:
    prometheus-client's counter family appends it.
    """
    tokens = [t for t in _NAME_SPLIT.split(name) if t]
    main_unit, _, per_unit = unit.partition("/")
    main, per = _unit_part(main_unit, UNITS), _unit_part(per_unit, PER_UNITS, "per_")
    if main in tokens:
        main = ""
    per = "" if per == "per_" else per.removesuffix("_")
    if per in tokens:
        per = ""
    if per:
        main = main.removesuffix("_")
    tokens += [t for t in (main, per) if t]
    if monotonic_sum:
        tokens = [t for t in tokens if t != "total"]
    if gauge and unit == "1":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    result = "_".join(tokens)
    return f"_{result}" if result[:1].isdigit() else result


def label_name(key: str) -> str:
    """An attribute key as a Prometheus label name, as the collector makes it (``1a.b`` → ``key_1a_b``)."""
    name = _INVALID_LABEL.sub("_", key)
    return f"key_{name}" if name[:1].isdigit() else name


def _labels(attributes: Any) -> dict[str, str]:
    return {label_name(str(k)): _label_value(v) for k, v in (attributes or {}).items() if k}


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_label_value(v) for v in value) + "]"
    return str(value)


class _PullReader(MetricReader):
    """A MetricReader that never pushes: ``collect()`` runs on each scrape."""

    red: Any = None
    resource: Any = None

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        self._latest = metrics_data

    def collect_now(self) -> MetricsData | None:
        from ._metrics import with_red

        self._latest: MetricsData | None = None
        self.collect()
        if self.red is None:
            return self._latest
        return with_red(self._latest, self.red, self.resource() if self.resource else Resource.get_empty())

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


class _Collector:
    """prometheus-client Collector translating one collection of the SDK's metrics."""

    def __init__(self, reader: _PullReader) -> None:
        self.reader = reader

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        data = self.reader.collect_now()
        if data is None:
            return
        families: dict[str, Any] = {}
        for resource_metrics in data.resource_metrics:
            yield from self._target_info(resource_metrics.resource, InfoMetricFamily)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    self._translate(metric, families, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)
        yield from families.values()

    @staticmethod
    def _target_info(resource: Resource, info_family: Any) -> Iterable[Any]:
        attributes = dict(resource.attributes)
        family = info_family("target", "Target metadata (the resource attributes)")
        family.add_metric([], _labels(attributes))
        yield family

    def _translate(self, metric: Any, families: dict[str, Any], counter: Any, gauge: Any, histogram: Any) -> None:
        data = metric.data
        description = metric.description or metric.name
        if isinstance(data, Histogram):
            name = prometheus_name(metric.name, metric.unit, monotonic_sum=False)
            for point in data.data_points:
                labels = _labels(point.attributes)
                family = families.get(name)
                if family is None:
                    family = families[name] = histogram(name, description, labels=list(labels))
                family.add_metric(list(labels.values()), *self._buckets(point), sum_value=point.sum)
        elif isinstance(data, Sum):
            name = prometheus_name(metric.name, metric.unit, monotonic_sum=data.is_monotonic)
            for point in data.data_points:
                labels = _labels(point.attributes)
                family = families.get(name)
                if family is None:
                    kind = counter if data.is_monotonic else gauge
                    family = families[name] = kind(name, description, labels=list(labels))
                family.add_metric(list(labels.values()), point.value)
        elif isinstance(data, Gauge):
            name = prometheus_name(metric.name, metric.unit, monotonic_sum=False, gauge=True)
            for point in data.data_points:
                labels = _labels(point.attributes)
                family = families.get(name)
                if family is None:
                    family = families[name] = gauge(name, description, labels=list(labels))
                family.add_metric(list(labels.values()), point.value)

    @staticmethod
    def _buckets(point: HistogramDataPoint) -> tuple[list[Any]]:
        from prometheus_client.samples import Exemplar

        exemplars: dict[int, Any] = {}
        bounds = list(point.explicit_bounds)
        for exemplar in point.exemplars or ():
            if not exemplar.trace_id:
                continue
            index = next((i for i, b in enumerate(bounds) if exemplar.value <= b), len(bounds))
            exemplars[index] = Exemplar(
                {"trace_id": format(exemplar.trace_id, "032x"), "span_id": format(exemplar.span_id or 0, "016x")},
                exemplar.value,
                exemplar.time_unix_nano / 1e9,
            )
        buckets: list[Any] = []
        cumulative = 0
        for index, count in enumerate(point.bucket_counts):
            cumulative += count
            bound = "+Inf" if index >= len(bounds) else _format_bound(bounds[index])
            if index in exemplars:
                buckets.append([bound, cumulative, exemplars[index]])
            else:
                buckets.append([bound, cumulative])
        return (buckets,)


def _format_bound(bound: float) -> str:
    if math.isinf(bound):
        return "+Inf"
    return repr(float(bound))


class PrometheusEndpoint:
    """The pull reader plus the HTTP server exposing it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader = _PullReader()
        self.bound_port: int | None = None
        self._server: Any = None
        self._thread: Any = None

    def start(self, *, spread: bool = False) -> None:
        """Serve on ``host:port``; a forked worker (``spread``) takes the next free port instead."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.reader))
        ports = range(self.port, self.port + (_PORT_SPREAD if spread else 1)) if self.port else [0]
        last_error: OSError | None = None
        for port in ports:
            try:
                self._server, self._thread = start_http_server(port, addr=self.host, registry=registry)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                last_error = exc
                continue
            self.bound_port = self._server.server_port
            _logger.info(
                "meshwatch Prometheus endpoint on http://%s:%s/metrics (pid %s)",
                self.host,
                self.bound_port,
                os.getpid(),
                extra={"prometheus_port": self.bound_port},
            )
            return
        _logger.warning(
            "meshwatch could not serve /metrics on %s:%s (%s); use OTLP push or another port",
            self.host,
            self.port,
            last_error,
        )

    def restart_after_fork(self) -> None:
        """In a forked worker the parent's server thread is gone; serve this process's metrics anew."""
        if self._server is not None:
            self._server.server_close()  # this process's copy of the parent's socket only
        self._server = None
        self._thread = None
        self.bound_port = None
        self.start(spread=True)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
