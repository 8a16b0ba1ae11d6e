"""``prometheusremotewrite`` exporter: metrics pushed to Prometheus' ``/api/v1/write``.

    exporters:
      prometheusremotewrite:
        endpoint: http://127.0.0.1:9090/api/v1/write   # Prometheus with --web.enable-remote-write-receiver
        headers: {}                                     # e.g. X-Scope-OrgID for Mimir/Cortex
        namespace: ""
        resource_to_telemetry_conversion: {enabled: false}
        target_info: {enabled: true}
        cardinality_limit: 2000                         # series per metric, the overflow series included
        metric_expiration: 5m                           # a label set unseen this long frees its place
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

``cardinality_limit`` bounds the series each metric name writes, as the ``prometheus``
exporter does (``_cardinality``): once a metric has written ``cardinality_limit - 1``
label sets (each remembered by its hash until unseen for ``metric_expiration``), points
of new label sets are added into its one ``otel_metric_overflow="true"`` series
(``_prom_store.Overflow``: cumulative increases summed, gauges last value) and counted
in ``meshwatch_exporter_overflowed_points_total``. That series is written by one sender
at a time, in a request of its own after each successful send, with timestamps that
only increase, so concurrent workers never make Prometheus refuse it (or the data
around it) as out of order. Summaries beyond the limit are dead letters
(``cardinality_limit``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import urllib3
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from ..batch import Batch
from ..component import Capabilities, Component, CreateSettings, Host, Kind, make_factory
from ..duration import parse_duration
from ..otlp_values import any_to_string, format_float
from ..sender import ExporterSettings, PermanentError, SendResult, TransientError
from ..signals import Signal
from ..telemetry import Telemetry
from ._cardinality import DEFAULT_LIMIT, TRACKED_PER_LIMIT, Generations, OverflowReport
from ._prom_names import GAUGE, MONOTONIC, NON_MONOTONIC, OTHER, label_name, metric_name, resource_identity
from ._prom_store import Overflow, _Exp, _Series
from ._remote_write_pb import WriteRequest

__all__ = ["RemoteWriteConfig", "RemoteWriteSender", "SeriesLimit", "factory", "translate"]

log = logging.getLogger("meshwatch.collector.exporter.prometheusremotewrite")

DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA


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
    #: Series per metric name, the ``otel_metric_overflow="true"`` series included; 0: no limit.
    cardinality_limit: int = Field(DEFAULT_LIMIT, ge=0)
    #: Seconds (or ``5m``) after which a label set not written again frees its place.
    metric_expiration: float = 300.0

    _check_expiration = field_validator("metric_expiration", mode="before")(parse_duration)


class SeriesLimit:
    """Which label sets each metric writes as its own series, and its overflow series (thread-safe)."""

    def __init__(self, limit: int, expiration: float) -> None:
        self.limit = limit
        self.expiration = expiration
        self._known: dict[str, Generations] = {}
        #: metric name -> [point kind, Overflow, last written millis, changed since written]
        self._overflow: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._rotated = time.time()

    def admit(self, name: str, key: int, now: float) -> bool:
        """True: the label set is (or becomes) one of the metric's own series."""
        with self._lock:
            known = self._known.get(name)
            if known is None:
                known = self._known[name] = Generations(self.expiration, now)
            if key in known:
                known.get(key)  # refreshes it
                return True
            entry = self._overflow.get(name)
            if len(known) < self.limit - 1 and (entry is None or key not in entry[1].seen):
                known.set(key, None)
                return True
            return False

    def fold(self, name: str, data: str, point: Any, key: int, *, monotonic: bool, now: float) -> str | None:
        """Add a point of a label set that was not admitted to the metric's overflow series."""
        with self._lock:
            entry = self._overflow.get(name)
            if entry is None:
                entry = self._overflow[name] = [
                    data,
                    Overflow({}, self.expiration, now, TRACKED_PER_LIMIT * self.limit),
                    0,
                    False,
                ]
            elif entry[0] != data:
                return "type_conflict"
            reason = entry[1].add(data, point, key, delta=False, monotonic=monotonic, now=now)
            if reason is None:
                entry[3] = True
            return reason

    def expire(self, now: float) -> None:
        with self._lock:
            if now - self._rotated < self.expiration:
                return
            self._rotated = now
            for name in list(self._known):
                self._known[name].rotate(now)
                if not self._known[name]:
                    del self._known[name]
            for name in list(self._overflow):
                overflow = self._overflow[name][1]
                overflow.seen.rotate(now)
                if overflow.series.updated < now - self.expiration:
                    del self._overflow[name]

    def pending(self, max_buckets: int) -> tuple[Any, list[list[Any]]]:
        """A ``WriteRequest`` with every overflow series changed since it was last written."""
        writer = _Writer()
        entries: list[list[Any]] = []
        with self._lock:
            for name, entry in self._overflow.items():
                if not entry[3]:
                    continue
                data, overflow, last = entry[0], entry[1], entry[2]
                series = overflow.series
                millis = max(series.time // 1_000_000, last + 1)
                _write_series(writer, data, name, series, millis=millis, max_buckets=max_buckets)
                entries.append(entry)
                entry[3] = False
                entry[2] = millis
        return writer.request, entries

    def unsent(self, entries: list[list[Any]]) -> None:
        """The request from ``pending`` failed: write these again next time."""
        with self._lock:
            for entry in entries:
                entry[3] = True


def _write_series(writer: _Writer, data: str, name: str, series: _Series, *, millis: int, max_buckets: int) -> None:
    labels = series.labels
    if data in ("gauge", "sum"):
        writer.add({**labels, "__name__": name}, series.value, millis)
        return
    if isinstance(series.extra, _Exp):
        bounds, counts = series.extra.classic(max_buckets)
    else:
        bounds, counts = series.extra if series.extra is not None else ((), [series.count])
    cumulative = 0
    for index, bound in enumerate(bounds):
        cumulative += counts[index]
        writer.add({**labels, "__name__": f"{name}_bucket", "le": format_float(bound)}, float(cumulative), millis)
    writer.add({**labels, "__name__": f"{name}_bucket", "le": "+Inf"}, float(series.count), millis)
    writer.add({**labels, "__name__": f"{name}_count"}, float(series.count), millis)
    writer.add({**labels, "__name__": f"{name}_sum"}, series.sum or 0.0, millis)


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
    identity = resource_identity(resource, promote_all=config.resource_to_telemetry_conversion.enabled)
    return identity.labels, identity.target_info if config.target_info.enabled else None


def translate(
    request: Any,
    config: RemoteWriteConfig,
    limit: SeriesLimit | None = None,
    overflowed: dict[str, int] | None = None,
) -> tuple[Any, int, list[dict[str, Any]]]:
    """(WriteRequest, points written, dead letters for points that cannot be written).

    With ``limit``, points beyond a metric's ``cardinality_limit`` go to its overflow
    series instead (counted per metric name in ``overflowed``, and in "points written").
    """
    now = time.time()
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
                body = getattr(metric, data)  # getattr: the protobuf oneof's member
                if data in ("sum", "histogram", "exponential_histogram") and body.aggregation_temporality == DELTA:
                    for point in body.data_points:
                        letters.append(
                            {
                                "metric": metric.name,
                                "attributes": {kv.key: any_to_string(kv.value) for kv in point.attributes},
                                "reason": "delta_temporality",
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
                    if limit is not None and limit.limit:
                        folded = _overflow(
                            limit,
                            metric,
                            point,
                            point_labels,
                            data=data,
                            name=name,
                            kind=kind,
                            now=now,
                            letters=letters,
                        )
                        if folded is not None:
                            written += folded
                            if folded and overflowed is not None:
                                overflowed[name] = overflowed.get(name, 0) + 1
                            continue
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


def _overflow(
    limit: SeriesLimit,
    metric: Any,
    point: Any,
    labels: dict[str, str],
    *,
    data: str,
    name: str,
    kind: str,
    now: float,
    letters: list[dict[str, Any]],
) -> int | None:
    """``None``: the point has a series of its own; else 1 (added to the overflow series) or 0 (not)."""
    key = hash(tuple(sorted(labels.items())))
    if limit.admit(name, key, now):
        return None
    why = limit.fold(name, data, point, key, monotonic=kind == MONOTONIC, now=now)
    if why is None:
        return 1
    if why != "out_of_order":  # an old resend: what it says is already counted
        letters.append(
            {
                "metric": metric.name,
                "attributes": {kv.key: any_to_string(kv.value) for kv in point.attributes},
                "reason": why,
                "error": f"beyond cardinality_limit ({limit.limit}) and cannot be merged",
            }
        )
    return 0


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

    def __init__(
        self, config: RemoteWriteConfig, telemetry: Telemetry, exporter: str = "prometheusremotewrite"
    ) -> None:
        self.config = config
        self.url = str(config.endpoint)
        self._pool: urllib3.PoolManager | None = None
        self.limit = SeriesLimit(config.cardinality_limit, config.metric_expiration)
        self.overflow = OverflowReport(exporter, telemetry, log)
        self._overflow_warned = -60.0

    def start(self, host: Host | None = None) -> None:
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=4, retries=False)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.clear()

    def send(self, batch: Batch) -> SendResult:
        overflowed: dict[str, int] = {}
        write_request, _written, letters = translate(batch.message, self.config, self.limit, overflowed)
        reasons = {letter.get("reason", "") for letter in letters}
        result = SendResult(
            rejected=len(letters),
            rejected_reason="delta_temporality" if "delta_temporality" in reasons else next(iter(reasons), ""),
            dead_letters=letters,
        )
        if write_request.timeseries:
            self._post(write_request)
        for name, points in overflowed.items():
            self.overflow(name, points, self.config.cardinality_limit)
        self._write_overflow()
        self.limit.expire(time.time())
        return result

    def _write_overflow(self) -> None:
        """Write the overflow series that changed: one writer at a time, timestamps only increasing."""
        with self.limit._flush_lock:
            request, entries = self.limit.pending(self.config.max_exponential_buckets)
            if not entries:
                return
            try:
                self._post(request)
            except (TransientError, PermanentError) as exc:
                self.limit.unsent(entries)  # cumulative: the next write carries the whole total
                now = time.monotonic()
                if now - self._overflow_warned >= 60.0:  # at most one line a minute
                    self._overflow_warned = now
                    log.warning(
                        "%s: overflow series not written this time, will be with the next send (%s)", self.url, exc
                    )

    def _post(self, write_request: Any) -> None:
        import cramjam

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
            return
        text = response.data[:500].decode(errors="replace")
        message = f"{self.url}: HTTP {status}: {text}"
        if status == 429 or status >= 500:
            raise TransientError(
                f"http_{status}", message, retry_after=_retry_after(response.headers.get("Retry-After"))
            )
        raise PermanentError(f"http_{status}", message)


def _create(settings: CreateSettings, config: RemoteWriteConfig) -> Component:
    from ..queued_exporter import queued_exporter

    return queued_exporter(settings, config, RemoteWriteSender(config, settings.telemetry, str(settings.id)))


factory = make_factory(
    Kind.EXPORTER,
    "prometheusremotewrite",
    signals=frozenset({Signal.METRICS}),
    config_model=RemoteWriteConfig,
    create=_create,
    capabilities=Capabilities(mutates_data=False),
)
