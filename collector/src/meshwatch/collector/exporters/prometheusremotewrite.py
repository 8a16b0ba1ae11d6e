"""``prometheusremotewrite`` exporter: metrics pushed to Prometheus' ``/api/v1/write``.

    exporters:
      prometheusremotewrite:
        endpoint: http://127.0.0.1:9090/api/v1/write   # Prometheus with --web.enable-remote-write-receiver
        headers: {}                                     # e.g. X-Scope-OrgID for Mimir/Cortex
        namespace: ""
        resource_to_telemetry_conversion: {enabled: false}
        target_info: {enabled: true}
        sending_queue: {...}                            # the shared durable queue (queued_exporter)

A ``Sender`` for ``queued_exporter``: each send translates one (merged) OTLP request
into a remote-write 1.0 ``WriteRequest`` (names and labels exactly as the
``prometheus`` exporter: ``_prom_names``), snappy-compresses it (cramjam, block
format) and POSTs it. Every point keeps its own timestamp. Histograms become
``_bucket{le}``/``_sum``/``_count`` series with exemplars; exponential histograms
classic buckets as in the ``prometheus`` exporter; ``target_info`` one series per
``job``/``instance``.

Delta temporality cannot be written as Prometheus samples without state that
survives retries, so delta sums and histograms are *rejected* (dead letters with
reason ``delta_temporality``, counted as dropped): put them through the pull
``prometheus`` exporter, which accumulates deltas. HTTP 429 and 5xx and connection
errors are ``TransientError`` (``Retry-After`` honoured), other 4xx ``PermanentError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import urllib3
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from ..batch import Batch
from ..component import Component, CreateSettings, Host, Kind
from ..processors._otlp import any_to_string, format_float
from ..sender import ExporterSettings, PermanentError, SendResult, TransientError
from ..signals import Signal
from ._prom_names import GAUGE, MONOTONIC, NON_MONOTONIC, OTHER, label_name, metric_name
from ._prom_store import _Exp
from ._remote_write_pb import WriteRequest

__all__ = ["RemoteWriteConfig", "RemoteWriteSender", "factory", "translate"]

DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
_IDENTITY = ("service.name", "service.namespace", "service.instance.id")


class _Enabled(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False


class _TargetInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True


class RemoteWriteConfig(ExporterSettings):
    endpoint: HttpUrl
    headers: dict[str, str] = Field(default_factory=dict)
    namespace: str = ""
    resource_to_telemetry_conversion: _Enabled = Field(default_factory=_Enabled)
    target_info: _TargetInfo = Field(default_factory=_TargetInfo)
    without_scope_info: bool = False
    max_exponential_buckets: int = Field(40, ge=2, le=320)


class _Writer:
    """Accumulates time series into one ``WriteRequest``."""

    def __init__(self) -> None:
        self.request = WriteRequest()
        self.samples = 0

    def add(self, labels: dict[str, str], value: float, millis: int, exemplar: Any = None) -> None:
        series = self.request.timeseries.add()
        for name in sorted(labels):
            series.labels.add(name=name, value=labels[name])
        series.samples.add(value=value, timestamp=millis)
        if exemplar is not None and (exemplar.trace_id or exemplar.span_id):
            ex = series.exemplars.add(
                value=exemplar.as_double if exemplar.WhichOneof("value") == "as_double" else float(exemplar.as_int),
                timestamp=(exemplar.time_unix_nano or millis * 1_000_000) // 1_000_000,
            )
            if exemplar.trace_id:
                ex.labels.add(name="trace_id", value=exemplar.trace_id.hex())
            if exemplar.span_id:
                ex.labels.add(name="span_id", value=exemplar.span_id.hex())
        self.samples += 1


def _resource(resource: Any, config: RemoteWriteConfig) -> tuple[dict[str, str], dict[str, str] | None]:
    values = {kv.key: kv.value for kv in resource.attributes}
    labels: dict[str, str] = {}
    if config.resource_to_telemetry_conversion.enabled:
        for key, value in values.items():
            name = label_name(key)
            if name:
                labels[name] = any_to_string(value)
    job = any_to_string(values["service.name"]) if "service.name" in values else None
    if job is not None and "service.namespace" in values:
        job = f"{any_to_string(values['service.namespace'])}/{job}"
    instance = any_to_string(values["service.instance.id"]) if "service.instance.id" in values else None
    if job is not None:
        labels["job"] = job
    if instance is not None:
        labels["instance"] = instance
    info = None
    if job is not None and instance is not None and config.target_info.enabled:
        info = {}
        for key in sorted(values):
            name = label_name(key) if key not in _IDENTITY else ""
            if name:
                text = any_to_string(values[key])
                info[name] = f"{info[name]};{text}" if name in info else text
        info.update(job=job, instance=instance)
    return labels, info


def _points(metric: Any) -> Iterator[Any]:
    data = metric.WhichOneof("data")
    if data is not None:
        yield from getattr(metric, data).data_points


def translate(request: Any, config: RemoteWriteConfig) -> tuple[Any, int, list[dict[str, Any]]]:
    """(WriteRequest, points written, dead letters for points that cannot be written)."""
    writer = _Writer()
    letters: list[dict[str, Any]] = []
    written = 0
    namespace = label_name(config.namespace) if config.namespace else ""
    for rm in request.resource_metrics:
        base, info = _resource(rm.resource, config)
        newest = 0
        for sm in rm.scope_metrics:
            labels = dict(base)
            if not config.without_scope_info:
                if sm.scope.name:
                    labels["otel_scope_name"] = sm.scope.name
                if sm.scope.version:
                    labels["otel_scope_version"] = sm.scope.version
            for metric in sm.metrics:
                data = metric.WhichOneof("data")
                if data is None:
                    continue
                body = getattr(metric, data)
                if data in ("sum", "histogram", "exponential_histogram") and body.aggregation_temporality == DELTA:
                    for point in body.data_points:
                        letters.append(
                            {
                                "metric": metric.name,
                                "attributes": {kv.key: any_to_string(kv.value) for kv in point.attributes},
                                "error": "delta temporality cannot be remote-written; use the prometheus exporter",
                            }
                        )
                    continue
                if data == "gauge":
                    kind = GAUGE
                elif data == "sum":
                    kind = MONOTONIC if body.is_monotonic else NON_MONOTONIC
                else:
                    kind = OTHER
                name = metric_name(metric.name, metric.unit, kind, namespace)
                for point in body.data_points:
                    point_labels = {}
                    for kv in point.attributes:
                        key = label_name(kv.key)
                        if key:
                            text = any_to_string(kv.value)
                            point_labels[key] = f"{point_labels[key]};{text}" if key in point_labels else text
                    point_labels.update(labels)
                    millis = point.time_unix_nano // 1_000_000
                    newest = max(newest, millis)
                    _write_point(
                        writer,
                        data,
                        name,
                        point,
                        point_labels,
                        millis=millis,
                        max_buckets=config.max_exponential_buckets,
                    )
                    written += 1
        if info is not None and newest:
            writer.add({**info, "__name__": f"{namespace}_target_info" if namespace else "target_info"}, 1.0, newest)
    return writer.request, written, letters


def _write_point(
    writer: _Writer, data: str, name: str, point: Any, labels: dict[str, str], *, millis: int, max_buckets: int
) -> None:
    if data in ("gauge", "sum"):
        value = point.as_double if point.WhichOneof("value") == "as_double" else float(point.as_int)
        exemplar = point.exemplars[-1] if point.exemplars else None
        writer.add({**labels, "__name__": name}, value, millis, exemplar)
        return
    if data == "summary":
        for quantile in point.quantile_values:
            writer.add(
                {**labels, "__name__": name, "quantile": format_float(quantile.quantile)}, quantile.value, millis
            )
        writer.add({**labels, "__name__": f"{name}_sum"}, point.sum, millis)
        writer.add({**labels, "__name__": f"{name}_count"}, float(point.count), millis)
        return
    if data == "histogram":
        bounds, counts = list(point.explicit_bounds), list(point.bucket_counts)
        if len(counts) != len(bounds) + 1:
            bounds, counts = [], [point.count]
    else:
        bounds, counts = _Exp(point).classic(max_buckets)
        counts = [*counts, 0]
    by_bucket: dict[int, Any] = {}
    for ex in point.exemplars:
        value = ex.as_double if ex.WhichOneof("value") == "as_double" else float(ex.as_int)
        by_bucket[next((i for i, b in enumerate(bounds) if value <= b), len(bounds))] = ex
    cumulative = 0
    for index, bound in enumerate(bounds):
        cumulative += counts[index]
        bucket = {**labels, "__name__": f"{name}_bucket", "le": format_float(bound)}
        writer.add(bucket, float(cumulative), millis, by_bucket.get(index))
    bucket = {**labels, "__name__": f"{name}_bucket", "le": "+Inf"}
    writer.add(bucket, float(point.count), millis, by_bucket.get(len(bounds)))
    writer.add({**labels, "__name__": f"{name}_count"}, float(point.count), millis)
    if point.HasField("sum"):
        writer.add({**labels, "__name__": f"{name}_sum"}, point.sum, millis)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class RemoteWriteSender:
    thread_safe = True

    def __init__(self, config: RemoteWriteConfig) -> None:
        self.config = config
        self.url = str(config.endpoint)
        self._pool: urllib3.PoolManager | None = None

    def start(self, host: Host | None = None) -> None:
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=4, retries=False)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.clear()

    def send(self, batch: Batch) -> SendResult:
        import cramjam

        write_request, written, letters = translate(batch.message, self.config)
        result = SendResult(
            rejected=len(letters), rejected_reason="delta_temporality" if letters else "", dead_letters=letters
        )
        if not written:
            return result
        body = bytes(cramjam.snappy.compress_raw(write_request.SerializeToString()))
        headers = {
            **self.config.headers,
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
            "User-Agent": "meshwatch-collector",
        }
        if self._pool is None:
            self.start()
        assert self._pool is not None
        try:
            response = self._pool.request(
                "POST", self.url, body=body, headers=headers, timeout=urllib3.Timeout(total=self.config.timeout)
            )
        except urllib3.exceptions.HTTPError as exc:
            raise TransientError("unreachable", f"{self.url}: {exc}") from exc
        status = response.status
        if status < 300:
            return result
        text = response.data[:500].decode(errors="replace")
        message = f"{self.url}: HTTP {status}: {text}"
        if status == 429 or status >= 500:
            raise TransientError(
                f"http_{status}", message, retry_after=_retry_after(response.headers.get("Retry-After"))
            )
        raise PermanentError(f"http_{status}", message)


class _Factory:
    type = "prometheusremotewrite"
    kind = Kind.EXPORTER
    signals = frozenset({Signal.METRICS})
    config_model = RemoteWriteConfig

    def create(self, settings: CreateSettings, config: RemoteWriteConfig, next_consumer: Any) -> Component:
        from ..queued_exporter import queued_exporter

        return queued_exporter(settings, config, RemoteWriteSender(config))


factory = _Factory()
