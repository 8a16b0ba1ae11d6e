"""``spanmetrics`` connector: RED metrics derived from spans, as the OpenTelemetry
Collector's ``spanmetrics`` connector names them, so services that only trace still
get request rate, errors and duration.

It is the exporter of a traces pipeline and the receiver of a metrics pipeline:

    connectors:
      spanmetrics:
        dimensions:                     # extra labels from span (then resource) attributes
          - name: http.request.method
          - name: http.route
            default: unknown
        histogram:
          explicit: {buckets: [5ms, 10ms, 50ms, 100ms, 500ms, 1s, 5s]}
        exemplars: {enabled: true}
        metrics_flush_interval: 15s
        aggregation_cardinality_limit: 5000   # series per resource; more go to one overflow series
    service:
      pipelines:
        traces:  {receivers: [otlp], exporters: [otlp/jaeger, spanmetrics]}
        metrics: {receivers: [spanmetrics], exporters: [prometheus]}

Every flush emits, per resource (``service.name``, ``service.namespace``,
``service.instance.id``: so ``job``/``instance`` are the service's), cumulative
``traces.span.metrics.calls`` (sum) and ``traces.span.metrics.duration`` (histogram,
unit ``s``) with attributes ``service.name``, ``span.name``, ``span.kind``
(``SPAN_KIND_SERVER``, …), ``status.code`` (``STATUS_CODE_ERROR``, …) and the
configured dimensions. In Prometheus: ``traces_span_metrics_calls_total`` and
``traces_span_metrics_duration_seconds_{bucket,sum,count}``. Exemplars (trace and
span id; the first span per bucket of each flush interval) ride on the histogram.
Spans of resources without ``service.name`` are skipped, as the Collector does.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Mapping
from typing import Any, Literal

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..component import Capabilities, Component, Consumer, CreateSettings, Host, Kind, make_factory
from ..duration import parse_duration
from ..otlp_values import any_to_string
from ..signals import Signal
from ._common import (
    DEFAULT_BUCKETS,
    KIND_NAMES,
    STATUS_NAMES,
    Flusher,
    add_histogram_point,
    duration_list,
    emit,
    flush_failures,
    histogram_metric,
    string_attributes,
    sum_metric,
)

__all__ = ["SpanMetricsConfig", "SpanMetricsConnector", "factory", "IDENTITY_ATTRIBUTES"]

log = logging.getLogger("meshwatch.collector.connector.spanmetrics")

#: Resource attributes that identify a series' service (Prometheus job/instance).
IDENTITY_ATTRIBUTES = ("service.name", "service.namespace", "service.instance.id")
_OVERFLOW = ("__overflow__",)


class Dimension(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    default: str | None = None


class Explicit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    buckets: list[float] = Field(default_factory=lambda: list(DEFAULT_BUCKETS), min_length=1)

    _durations = field_validator("buckets", mode="before")(duration_list)

    @field_validator("buckets")
    @classmethod
    def _sorted(cls, buckets: list[float]) -> list[float]:
        if sorted(set(buckets)) != buckets:
            raise ValueError("buckets must be distinct and ascending")
        return buckets


class HistogramConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unit: Literal["s"] = "s"
    explicit: Explicit = Field(default_factory=Explicit)


class Exemplars(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True


class SpanMetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: str = "traces.span.metrics"
    dimensions: list[Dimension] = []
    histogram: HistogramConfig = Field(default_factory=HistogramConfig)
    exemplars: Exemplars = Field(default_factory=Exemplars)
    metrics_flush_interval: float = Field(15.0, gt=0)
    #: Drop a resource's series after this long without spans (0: never).
    metrics_expiration: float = Field(0.0, ge=0)
    #: Series per resource; spans beyond it are counted in one ``otel.metric.overflow`` series (0: no limit).
    aggregation_cardinality_limit: int = Field(5000, ge=0)

    _durations = field_validator("metrics_flush_interval", "metrics_expiration", mode="before")(parse_duration)


class _Resource:
    __slots__ = ("attributes", "fallback", "last_seen", "series")

    def __init__(self, attributes: list[tuple[str, str]], fallback: list[str | None]) -> None:
        self.attributes = attributes
        #: per dimension: the resource attribute's value, else the default, else None
        self.fallback = fallback
        #: key -> [calls, duration sum, bucket counts, exemplars or None, start ns, dimension values]
        self.series: dict[tuple[Any, ...], list[Any]] = {}
        self.last_seen = 0.0


class SpanMetricsConnector:
    def __init__(self, settings: CreateSettings, config: SpanMetricsConfig, next_consumer: Consumer) -> None:
        self.id = settings.id
        self.config = config
        self.next = next_consumer
        self.bounds = tuple(config.histogram.explicit.buckets)
        self._dims = [d.name for d in config.dimensions]
        self._dim_index = {name: i for i, name in enumerate(self._dims)}
        self._defaults = [d.default for d in config.dimensions]
        self._hints = [-1] * len(self._dims)
        self._resources: dict[tuple[tuple[str, str], ...], _Resource] = {}
        self._lock = threading.Lock()
        self._flusher = Flusher(f"{self.id} flush", [(config.metrics_flush_interval, self.flush)])
        self._failed = flush_failures(settings.telemetry, str(self.id))
        prefix = config.namespace + "." if config.namespace else ""
        self._calls_name = f"{prefix}calls"
        self._duration_name = f"{prefix}duration"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, host: Host) -> None:
        self._flusher.start()

    def shutdown(self, timeout: float) -> None:
        self._flusher.stop(timeout)
        self.flush()

    # --- aggregation (receive path) ----------------------------------------------------------

    def _resource(self, resource: Any, now: float) -> _Resource | None:
        identity: list[tuple[str, str]] = []
        values: dict[str, Any] = {}
        for kv in resource.attributes:
            if kv.key in IDENTITY_ATTRIBUTES:
                identity.append((kv.key, any_to_string(kv.value)))
            if kv.key in self._dim_index:
                values[kv.key] = kv.value
        if not any(key == "service.name" for key, _ in identity):
            return None
        identity.sort()
        key = tuple(identity)
        state = self._resources.get(key)
        if state is None:
            fallback = [
                any_to_string(values[name]) if name in values else self._defaults[i]
                for i, name in enumerate(self._dims)
            ]
            state = self._resources[key] = _Resource(identity, fallback)
        state.last_seen = now
        return state

    def consume(self, batch: Any) -> None:
        message = batch.message
        bounds = self.bounds
        exemplars = self.config.exemplars.enabled
        limit = self.config.aggregation_cardinality_limit
        dims = self._dim_index
        now_ns = time.time_ns()
        with self._lock:
            for rs in message.resource_spans:
                state = self._resource(rs.resource, now_ns / 1e9)
                if state is None:
                    continue
                table = state.series
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        start = span.start_time_unix_nano
                        end = span.end_time_unix_nano
                        duration = (end - start) / 1e9 if end > start else 0.0
                        if dims:
                            key = (span.name, span.kind, span.status.code, *self._dimension_values(span, state))
                        else:
                            key = (span.name, span.kind, span.status.code)
                        series = table.get(key)
                        if series is None:
                            if limit and len(table) >= limit:
                                key = _OVERFLOW
                                series = table.get(key)
                            if series is None:
                                series = table[key] = [0, 0.0, [0] * (len(bounds) + 1), None, now_ns]
                        series[0] += 1
                        series[1] += duration
                        index = bisect_left(bounds, duration)
                        series[2][index] += 1
                        if exemplars:
                            found = series[3]
                            if found is None:
                                found = series[3] = {}
                            if index not in found and span.trace_id:
                                found[index] = (span.trace_id, span.span_id, duration, end)

    def _dimension_values(self, span: Any, state: _Resource) -> list[str | None]:
        """Configured dimensions of a span: its attribute, else the resource's, else the default.

        Walking a span's attribute list from Python costs ≈0.5 µs per attribute (each
        element becomes a wrapper object), so each dimension first looks at the position
        where it was found last time (spans of one instrumentation share an attribute
        order) and scans only when that misses.
        """
        values = list(state.fallback)
        attributes = span.attributes
        hints = self._hints
        for position, name in enumerate(self._dims):
            hint = hints[position]
            kv = None
            if hint >= 0:
                try:
                    kv = attributes[hint]
                except IndexError:
                    kv = None
                if kv is not None and kv.key != name:
                    kv = None
            if kv is None:
                for index, candidate in enumerate(attributes):
                    if candidate.key == name:
                        kv = candidate
                        hints[position] = index
                        break
                else:
                    continue
            values[position] = any_to_string(kv.value)
        return values

    # --- flushing ----------------------------------------------------------------------------

    def build(self, now_ns: int | None = None) -> ExportMetricsServiceRequest:
        """The cumulative state as one metrics request (and clear this interval's exemplars)."""
        now_ns = now_ns or time.time_ns()
        request = ExportMetricsServiceRequest()
        expiration = self.config.metrics_expiration
        with self._lock:
            if expiration:
                limit = now_ns / 1e9 - expiration
                for key in [k for k, r in self._resources.items() if r.last_seen < limit]:
                    del self._resources[key]
            for state in self._resources.values():
                if not state.series:
                    continue
                rm = request.resource_metrics.add()
                rm.resource.attributes.extend(string_attributes(state.attributes))
                sm = rm.scope_metrics.add()
                sm.scope.name = "spanmetricsconnector"
                calls = sm.metrics.add()
                calls.CopyFrom(sum_metric(self._calls_name, "Number of spans, by service, name, kind and status"))
                duration = sm.metrics.add()
                duration.CopyFrom(histogram_metric(self._duration_name, "Span durations", self.config.histogram.unit))
                service = next(v for k, v in state.attributes if k == "service.name")
                for key, series in state.series.items():
                    attributes = string_attributes(self._point_attributes(service, key))
                    point = calls.sum.data_points.add(start_time_unix_nano=series[4], time_unix_nano=now_ns)
                    point.as_int = series[0]
                    point.attributes.extend(attributes)
                    add_histogram_point(
                        duration,
                        attributes,
                        start=series[4],
                        now=now_ns,
                        bounds=self.bounds,
                        counts=series[2],
                        total=series[1],
                        exemplars=series[3],
                    )
                    series[3] = None
        return request

    def _point_attributes(self, service: str, key: tuple[Any, ...]) -> list[tuple[str, str]]:
        if key == _OVERFLOW:
            return [("service.name", service), ("otel.metric.overflow", "true")]
        pairs = [
            ("service.name", service),
            ("span.name", key[0]),
            ("span.kind", KIND_NAMES.get(key[1], "SPAN_KIND_UNSPECIFIED")),
            ("status.code", STATUS_NAMES.get(key[2], "STATUS_CODE_UNSET")),
        ]
        for name, value in zip(self._dims, key[3:], strict=True):
            if value is not None:
                pairs.append((name, value))
        return pairs

    def flush(self) -> None:
        emit(str(self.id), self.next, self.build(), self._failed)


def _create(settings: CreateSettings, config: SpanMetricsConfig, next: Mapping[Signal, Consumer]) -> Component:
    """Consumes traces; emits to the metrics pipelines that name it as a receiver."""
    return SpanMetricsConnector(settings, config, next[Signal.METRICS])


factory = make_factory(
    Kind.CONNECTOR,
    "spanmetrics",
    signals=frozenset({Signal.TRACES}),
    output_signals=frozenset({Signal.METRICS}),
    config_model=SpanMetricsConfig,
    create=_create,
    capabilities=Capabilities(mutates_data=False),
)
