"""What the span-derived metric connectors share: config pieces, the flush thread,
cumulative histogram state and the OTLP metric builders.

Both connectors aggregate under a lock on the receive path (one dict lookup and a
few additions per span) and emit cumulative ``ExportMetricsServiceRequest``
batches from a background thread to the metrics pipeline. A flush the pipeline
refuses loses nothing: the next flush carries the same cumulative totals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from ..batch import Batch
from ..component import Refused
from ..duration import parse_duration
from ..signals import Signal
from ..telemetry import Telemetry

__all__ = [
    "DEFAULT_BUCKETS",
    "KIND_NAMES",
    "STATUS_NAMES",
    "Flusher",
    "histogram_metric",
    "sum_metric",
    "duration_list",
    "emit",
    "string_attributes",
]

#: The OpenTelemetry Collector's default duration buckets (2 ms … 15 s), in seconds.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.05,
    0.1,
    0.2,
    0.4,
    0.8,
    1.0,
    1.4,
    2.0,
    5.0,
    10.0,
    15.0,
)
KIND_NAMES = {value: name for name, value in Span.SpanKind.items()}
STATUS_NAMES = {value: name for name, value in Status.StatusCode.items()}
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

log = logging.getLogger("meshwatch.collector.connector")


def duration_list(values: Any) -> Any:
    """Validator helper: a list of durations (``10ms``, ``1s``, numbers in seconds)."""
    if isinstance(values, list):
        return [parse_duration(v) for v in values]
    return values


def string_attributes(pairs: Any) -> list[KeyValue]:
    out = []
    for key, value in pairs:
        kv = KeyValue(key=key)
        kv.value.string_value = value
        out.append(kv)
    return out


def sum_metric(name: str, description: str, unit: str = "") -> Metric:
    metric = Metric(name=name, description=description, unit=unit)
    metric.sum.aggregation_temporality = CUMULATIVE
    metric.sum.is_monotonic = True
    return metric


def histogram_metric(name: str, description: str, unit: str) -> Metric:
    metric = Metric(name=name, description=description, unit=unit)
    metric.histogram.aggregation_temporality = CUMULATIVE
    return metric


def add_histogram_point(
    metric: Metric,
    attributes: list[KeyValue],
    *,
    start: int,
    now: int,
    bounds: tuple[float, ...],
    counts: list[int],
    total: float,
    exemplars: dict[int, tuple[bytes, bytes, float, int]] | None = None,
) -> None:
    point = metric.histogram.data_points.add(
        start_time_unix_nano=start,
        time_unix_nano=now,
        count=sum(counts),
        sum=total,
        explicit_bounds=bounds,
        bucket_counts=counts,
    )
    point.attributes.extend(attributes)
    if exemplars:
        for trace_id, span_id, value, stamp in exemplars.values():
            point.exemplars.add(trace_id=trace_id, span_id=span_id, as_double=value, time_unix_nano=stamp)


def emit(
    component: str, next_consumer: Any, request: ExportMetricsServiceRequest, failed: Callable[[int], None]
) -> None:
    """Hand a metrics request to the pipeline; a refusal is logged and counted (the next flush repeats it)."""
    batch = Batch.from_message(Signal.METRICS, request, connector=component)
    if not batch.items:
        return
    try:
        next_consumer.consume(batch)
    except Refused as exc:
        failed(batch.items)
        log.warning(
            "%s: metrics pipeline refused a flush (%s: %s); the next flush repeats it", component, exc.reason, exc
        )


class Flusher:
    """One daemon thread calling ``tasks`` at their own intervals until stopped."""

    def __init__(self, name: str, tasks: list[tuple[float, Callable[[], None]]]) -> None:
        self.name = name
        self.tasks = tasks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        due = [time.monotonic() + interval for interval, _ in self.tasks]
        while True:
            wait = max(0.0, min(due) - time.monotonic())
            if self._stop.wait(wait):
                return
            now = time.monotonic()
            for index, (interval, task) in enumerate(self.tasks):
                if now >= due[index]:
                    due[index] = now + interval
                    try:
                        task()
                    except Exception:  # a bug in one flush must not stop the next ones
                        log.exception("%s: periodic task failed", self.name)

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def flush_failures(telemetry: Telemetry, connector: str) -> Callable[[int], None]:
    counter = telemetry.counter(
        "meshwatch_connector_flush_refused_points",
        "Metric points a connector's flush could not hand to its metrics pipeline (repeated at the next flush)",
        ("connector",),
    )
    return lambda points: counter.labels(connector).inc(points)
