"""The MeterProvider: HTTP RED histograms with web-latency buckets, exemplars, runtime and drop metrics.

Readers: one periodic push reader whose exporter is a fan-out (OTLP or console,
plus the pytest capture when it listens), and the Prometheus pull reader when
enabled. Each reader keeps its own aggregation of every instrument, so an idle
reader is never added: ``metrics_exporter=none`` means no reader at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider, TraceBasedExemplarFilter
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from ._celery import TASK_DURATION
from ._config import Settings
from ._dropped import TALLY
from ._exporters import metric_exporter_factory
from ._red import RedMetrics

__all__ = ["HTTP_DURATION_BUCKETS", "FanOutMetricExporter", "build_meter_provider"]

_logger = logging.getLogger("meshwatch")

#: Seconds; the telemetry contract's buckets for web latency.
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


def _views() -> list[View]:
    buckets = ExplicitBucketHistogramAggregation(boundaries=HTTP_DURATION_BUCKETS)
    return [
        View(instrument_name="http.server.request.duration", aggregation=buckets),
        View(instrument_name="http.client.request.duration", aggregation=buckets),
        View(instrument_name=TASK_DURATION, aggregation=buckets),
    ]


def with_red(data: MetricsData | None, red: RedMetrics | None, resource: Resource) -> MetricsData | None:
    """The SDK's collection plus meshwatch's span-derived HTTP metrics, under the same resource."""
    scope = red.scope_metrics() if red is not None else None
    if scope is None:
        return data
    resource_metrics = list(data.resource_metrics) if data is not None else []
    if resource_metrics:
        first = resource_metrics[0]
        resource_metrics[0] = ResourceMetrics(first.resource, [*first.scope_metrics, scope], first.schema_url)
    else:
        resource_metrics.append(ResourceMetrics(resource, [scope], ""))
    return MetricsData(resource_metrics)


def _count_points(metrics_data: MetricsData) -> int:
    return sum(
        len(metric.data.data_points)
        for resource_metrics in metrics_data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    )


class FanOutMetricExporter(MetricExporter):
    """Sends each collection to the configured exporters and to in-memory listeners.

    Exporters are built lazily and rebuilt in a forked child (its parent's gRPC
    channel must not be used there). A failed export counts its points as dropped.
    """

    def __init__(
        self,
        factories: Iterable[Callable[[], MetricExporter]],
        red: RedMetrics | None = None,
        resource: Callable[[], Resource] | None = None,
    ) -> None:
        super().__init__()
        self._factories = list(factories)
        self.red = red
        self._resource = resource or Resource.get_empty
        self._exporters: list[MetricExporter] | None = None
        self._unbuilt: list[Callable[[], MetricExporter]] = []
        self._reported = False
        self._pid = os.getpid()
        self.listeners: list[Callable[[MetricsData], None]] = []
        self._lock = threading.Lock()
        self.last_ok: bool | None = None

    def renew_lock(self) -> None:
        """In a forked child: the parent's export thread may have held the lock at the fork."""
        self._lock = threading.Lock()

    def set_factories(self, factories: Iterable[Callable[[], MetricExporter]]) -> None:
        """Export to these from now on (a second ``init()``, or none after ``shutdown()``)."""
        with self._lock:
            old, self._exporters = self._exporters, None
            self._factories = list(factories)
            old_pid, self._pid = self._pid, os.getpid()
        if old and old_pid == os.getpid():
            for exporter in old:
                threading.Thread(target=_quiet_shutdown, args=(exporter,), daemon=True).start()

    def _current(self) -> list[MetricExporter]:
        with self._lock:
            if self._exporters is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._exporters = []
                self._unbuilt = list(self._factories)
                self._reported = False
            if self._unbuilt:  # retried at every export until built: one failure is not for ever
                for factory in list(self._unbuilt):
                    try:
                        self._exporters.append(factory())
                        self._unbuilt.remove(factory)
                    except Exception:
                        if not self._reported:
                            _logger.exception("meshwatch could not create a metric exporter (retried at each export)")
                self._reported = True
            return self._exporters

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        metrics_data = with_red(metrics_data, self.red, self._resource()) or metrics_data
        for listener in list(self.listeners):
            try:
                listener(metrics_data)
            except Exception:
                _logger.exception("meshwatch metric listener failed")
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))  # no spans for our own export calls
        try:
            return self._export(metrics_data, timeout_millis)
        finally:
            detach(token)

    def _export(self, metrics_data: MetricsData, timeout_millis: float) -> MetricExportResult:
        result = MetricExportResult.SUCCESS
        for exporter in self._current():
            try:
                outcome = exporter.export(metrics_data, timeout_millis=timeout_millis)
            except Exception:
                _logger.exception("meshwatch metric exporter raised")
                outcome = MetricExportResult.FAILURE
            if outcome != MetricExportResult.SUCCESS:
                TALLY.add("metrics", "export_failed", _count_points(metrics_data))
                result = MetricExportResult.FAILURE
        self.last_ok = result == MetricExportResult.SUCCESS
        TALLY.maybe_report()
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if self._exporters is None or self._pid != os.getpid():
            return
        for exporter in self._exporters:
            with contextlib.suppress(Exception):
                exporter.shutdown(timeout_millis=timeout_millis)


def _quiet_shutdown(exporter: MetricExporter) -> None:
    with contextlib.suppress(Exception):
        exporter.shutdown(timeout_millis=1000)


def metric_factories(settings: Settings) -> list[Callable[[], MetricExporter]]:
    kinds = [k for k in settings.metrics_exporter if k not in {"none", "prometheus"}]
    return [metric_exporter_factory(settings, kind) for kind in kinds]


#: Always reported, at 0 until something is dropped, so an alert on the series has one to watch.
_BASELINE = (
    ("traces", "queue_full"),
    ("traces", "export_failed"),
    ("logs", "queue_full"),
    ("logs", "export_failed"),
    ("metrics", "export_failed"),
)


def _dropped_callback(_: CallbackOptions) -> Iterable[Observation]:
    counts = dict.fromkeys(_BASELINE, 0)
    counts.update(TALLY.snapshot())
    for (signal, reason), count in counts.items():
        yield Observation(count, {"signal": signal, "reason": reason})


def build_meter_provider(
    settings: Settings,
    resource: Resource,
    *,
    red: RedMetrics | None = None,
    capture: bool = False,
    prometheus: Any = None,
) -> tuple[MeterProvider, FanOutMetricExporter | None, PeriodicExportingMetricReader | None]:
    """The provider, its push fan-out (if any) and its periodic reader (to force a collection)."""
    factories = metric_factories(settings)
    readers: list[Any] = []
    fan_out: FanOutMetricExporter | None = None
    periodic: PeriodicExportingMetricReader | None = None
    if factories or capture:
        fan_out = FanOutMetricExporter(factories, red, lambda: provider._sdk_config.resource)
        interval_ms = settings.metric_export_interval * 1000 if factories else 24 * 3600 * 1000
        periodic = PeriodicExportingMetricReader(
            fan_out,
            export_interval_millis=interval_ms,
            export_timeout_millis=settings.export_timeout * 1000,
        )
        readers.append(periodic)
    if prometheus is not None:
        prometheus.reader.red = red
        prometheus.reader.resource = lambda: provider._sdk_config.resource
        readers.append(prometheus.reader)
    exemplars = os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "trace_based").strip().lower()
    exemplar_filter = AlwaysOffExemplarFilter() if exemplars == "always_off" else TraceBasedExemplarFilter()
    provider = MeterProvider(
        metric_readers=readers,
        resource=resource,
        views=_views(),
        exemplar_filter=exemplar_filter,
        shutdown_on_exit=False,  # meshwatch's own exit hook shuts down within its bounded time
    )
    meter = provider.get_meter("meshwatch")
    meter.create_observable_counter(
        "meshwatch.sdk.dropped",
        [_dropped_callback],
        unit="{item}",
        description="Telemetry items the SDK could not deliver, by signal and reason",
    )
    if settings.runtime_metrics:
        from ._runtime import register_runtime_metrics

        register_runtime_metrics(provider.get_meter("meshwatch.runtime"))
    return provider, fan_out, periodic
