"""The Prometheus exporter's series store: OTLP metric points folded into cumulative series.

``fold(request)`` turns every data point of an ``ExportMetricsServiceRequest`` into
the state of one Prometheus series (keyed by family name and label set);
``families()`` renders the state as ``prometheus_client`` metric families for
exposition. What it does, point kind by point kind:

* gauges and non-monotonic cumulative sums: last value wins (a point older than the
  one held is dropped as ``out_of_order``);
* monotonic cumulative sums: last value (``_total``);
* **delta** sums (monotonic or not) and delta histograms: added to the running total
  (the series' start time stays), so Prometheus sees an ordinary cumulative counter;
  a delta point not newer than the last one folded is dropped as ``out_of_order``
  (a resend must not count twice). Histograms whose bucket bounds change are reset;
* exponential histograms: kept in their exponential form (deltas merged at the
  coarser scale) and exposed as classic ``_bucket{le}`` series whose bounds are the
  exponential bucket boundaries (``base^(i+1)``; negative buckets and the zero bucket
  below them). At most ``max_exponential_buckets`` buckets are exposed: finer
  histograms are downscaled (2 buckets merged into 1 per step) first. The ``le`` set
  therefore follows the data's scale; native-histogram exposition needs the protobuf
  scrape format, which prometheus-client does not write;
* summaries: ``{quantile}``, ``_sum``, ``_count``;
* points flagged "no recorded value" remove their series (staleness).

Resource ``service.name``/``service.namespace``/``service.instance.id`` give ``job``
and ``instance``; the other resource attributes go to one ``target_info`` series per
``job``/``instance`` (or, with ``resource_to_telemetry_conversion``, onto every
series). Series not updated for ``expiration`` seconds disappear.

``cardinality_limit`` (``_cardinality``) caps the series of one metric, the overflow
series included: a label set first seen when the metric is full goes into its one
``{otel_metric_overflow="true"}`` series (``Overflow``), which adds up what it is
given as the OpenTelemetry SDK's overflow point does: delta points are added;
cumulative sums and histograms add their increase since the same label set's last
point (remembered by a 64-bit hash, ~0.2 KB each instead of ~1 KB for a series, at
most ``TRACKED_PER_LIMIT`` times the limit per metric); gauges keep the last value.
Summaries, cumulative exponential histograms, and cumulative points of label sets
beyond what is remembered cannot be added up that way: those overflowed points are
dropped (``cardinality_limit``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar, Sample

from ..otlp_values import any_to_string, format_float
from ._cardinality import DEFAULT_LIMIT, OVERFLOW_LABEL, TRACKED_PER_LIMIT, Generations
from ._prom_names import GAUGE, MONOTONIC, NON_MONOTONIC, OTHER, label_name, metric_name, resource_identity

__all__ = ["SeriesStore", "Overflow"]

DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
NO_RECORDED_VALUE = 1


class _Series:
    __slots__ = ("count", "exemplars", "extra", "labels", "start", "sum", "time", "updated", "value")

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.time = 0
        self.start = 0
        self.updated = 0.0
        self.value: float = 0.0
        self.count = 0
        self.sum: float | None = None
        #: histograms: bucket index -> Exemplar; counters: {0: Exemplar}
        self.exemplars: dict[int, Exemplar] = {}
        #: histograms: (bounds, counts); exponential: _Exp; summaries: quantiles list
        self.extra: Any = None


class _Family:
    __slots__ = ("help", "name", "overflow", "series", "type")

    def __init__(self, name: str, type_: str, help_: str) -> None:
        self.name = name
        self.type = type_
        self.help = help_
        self.series: dict[tuple[tuple[str, str], ...], _Series] = {}
        self.overflow: Overflow | None = None


def _value(point: Any) -> float:
    return point.as_double if point.WhichOneof("value") == "as_double" else float(point.as_int)


def _histogram_counts(point: Any) -> tuple[tuple[float, ...], list[int]]:
    bounds = tuple(point.explicit_bounds)
    counts = list(point.bucket_counts) or [point.count]
    if len(counts) != len(bounds) + 1:  # malformed: keep count and sum only
        return (), [point.count]
    return bounds, counts


class Overflow:
    """A metric's one ``otel_metric_overflow="true"`` series and the label sets folded into it."""

    __slots__ = ("max_tracked", "seen", "series")

    def __init__(self, labels: dict[str, str], period: float, now: float, max_tracked: int) -> None:
        self.series = _Series({**labels, OVERFLOW_LABEL: "true"})
        #: label-set hash -> (time of its last point, its last cumulative state or None)
        self.seen = Generations(period, now)
        #: Label sets remembered at most; beyond, only points that need no memory (gauges,
        #: deltas) are added, cumulative ones are dropped (``cardinality_limit``).
        self.max_tracked = max_tracked

    def add(self, data: str, point: Any, key: int, *, delta: bool, monotonic: bool, now: float) -> str | None:
        """Fold one point in; returns ``None``, or why it was dropped."""
        stamp = point.time_unix_nano
        last = self.seen.get(key)
        if last is not None and ((stamp <= last[0]) if delta else (stamp < last[0])):
            return "out_of_order"
        track = last is not None or len(self.seen) < self.max_tracked
        if not track and not delta and data != "gauge":
            return "cardinality_limit"  # its increase could not be told from its next point
        series = self.series
        state: Any = None
        if data == "gauge":
            if stamp >= series.time:
                series.value = _value(point)
        elif data == "sum":
            value = _value(point)
            previous = None if delta or last is None else last[1]
            if previous is None or (monotonic and value < previous):  # delta, a new label set, or a reset
                series.value += value
            else:
                series.value += value - previous
            state = None if delta else value
        elif data == "histogram":
            bounds, counts = _histogram_counts(point)
            if series.extra is None:
                series.extra = (bounds, [0] * len(counts))
            elif series.extra[0] != bounds:
                return "cardinality_limit"  # other bucket bounds than the overflow series has
            total = series.extra[1]
            point_sum = point.sum if point.HasField("sum") else 0.0
            previous = None if delta or last is None else last[1]
            if previous is None or point.count < previous[0]:
                previous = (0, 0.0, (0,) * len(counts))
            for index, count in enumerate(counts):
                total[index] += count - previous[2][index]
            series.count += point.count - previous[0]
            series.sum = (series.sum or 0.0) + point_sum - previous[1]
            state = None if delta else (point.count, point_sum, tuple(counts))
        elif data == "exponential_histogram" and delta:
            incoming = _Exp(point)
            if isinstance(series.extra, _Exp):
                series.extra.add(incoming)
            else:
                series.extra = incoming
            series.count += point.count
            series.sum = (series.sum or 0.0) + point.sum
        else:  # summaries, cumulative exponential histograms: no way to add them up
            return "cardinality_limit"
        if track:
            self.seen.set(key, (stamp, state))
        if not series.time:
            series.start = point.start_time_unix_nano
        series.time = max(series.time, stamp)
        series.updated = now
        return None


class _Exp:
    """An exponential histogram's buckets (one side each)."""

    __slots__ = ("neg", "neg_offset", "pos", "pos_offset", "scale", "zero_count", "zero_threshold")

    def __init__(self, point: Any) -> None:
        self.scale = point.scale
        self.zero_count = point.zero_count
        self.zero_threshold = point.zero_threshold
        self.pos_offset = point.positive.offset
        self.pos = list(point.positive.bucket_counts)
        self.neg_offset = point.negative.offset
        self.neg = list(point.negative.bucket_counts)

    def downscale(self, steps: int) -> None:
        if steps <= 0:
            return
        self.pos_offset, self.pos = _downscale(self.pos_offset, self.pos, steps)
        self.neg_offset, self.neg = _downscale(self.neg_offset, self.neg, steps)
        self.scale -= steps

    def add(self, other: _Exp) -> None:
        if other.scale < self.scale:
            self.downscale(self.scale - other.scale)
        elif other.scale > self.scale:
            other.downscale(other.scale - self.scale)
        self.zero_count += other.zero_count
        self.zero_threshold = max(self.zero_threshold, other.zero_threshold)
        self.pos_offset, self.pos = _merge(self.pos_offset, self.pos, other.pos_offset, other.pos)
        self.neg_offset, self.neg = _merge(self.neg_offset, self.neg, other.neg_offset, other.neg)

    def classic(self, max_buckets: int) -> tuple[list[float], list[int]]:
        """Upper bounds and (non-cumulative) counts, ascending, without +Inf."""
        while len(self.pos) + len(self.neg) > max_buckets and self.scale > -10:
            self.downscale(1)
        base = 2.0 ** (2.0**-self.scale)
        bounds: list[float] = []
        counts: list[int] = []
        for index in range(self.neg_offset + len(self.neg) - 1, self.neg_offset - 1, -1):
            bounds.append(-(base**index))
            counts.append(self.neg[index - self.neg_offset])
        if self.neg or self.zero_count or self.zero_threshold:
            bounds.append(self.zero_threshold)
            counts.append(self.zero_count)
        for index in range(self.pos_offset, self.pos_offset + len(self.pos)):
            bounds.append(_pow(base, index + 1))
            counts.append(self.pos[index - self.pos_offset])
        return bounds, counts


def _pow(base: float, exponent: int) -> float:
    try:
        return base**exponent
    except OverflowError:
        return math.inf


def _downscale(offset: int, counts: list[int], steps: int) -> tuple[int, list[int]]:
    if not counts:
        return offset, counts
    new_offset = offset >> steps
    merged: list[int] = []
    for index, count in enumerate(counts):
        slot = ((offset + index) >> steps) - new_offset
        while len(merged) <= slot:
            merged.append(0)
        merged[slot] += count
    return new_offset, merged


def _merge(offset_a: int, a: list[int], offset_b: int, b: list[int]) -> tuple[int, list[int]]:
    if not b:
        return offset_a, a
    if not a:
        return offset_b, list(b)
    start = min(offset_a, offset_b)
    end = max(offset_a + len(a), offset_b + len(b))
    merged = [0] * (end - start)
    for index, count in enumerate(a):
        merged[offset_a - start + index] += count
    for index, count in enumerate(b):
        merged[offset_b - start + index] += count
    return start, merged


def _exemplar(ex: Any) -> tuple[float, Exemplar] | None:
    value = ex.as_double if ex.WhichOneof("value") == "as_double" else float(ex.as_int)
    labels: dict[str, str] = {}
    if ex.trace_id:
        labels["trace_id"] = ex.trace_id.hex()
    if ex.span_id:
        labels["span_id"] = ex.span_id.hex()
    if not labels:
        return None
    return value, Exemplar(labels, value, ex.time_unix_nano / 1e9 if ex.time_unix_nano else None)


def _bucket_index(bounds: Any, value: float) -> int:
    for index, bound in enumerate(bounds):
        if value <= bound:
            return index
    return len(bounds)


class SeriesStore:
    """Thread-safe; ``fold`` runs off the receive path, ``families`` at scrape time."""

    def __init__(
        self,
        *,
        namespace: str = "",
        expiration: float = 300.0,
        resource_to_telemetry: bool = False,
        without_scope_info: bool = False,
        const_labels: dict[str, str] | None = None,
        max_exponential_buckets: int = 40,
        cardinality_limit: int = DEFAULT_LIMIT,
        on_overflow: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.namespace = label_name(namespace) if namespace else ""
        self.expiration = expiration
        self.resource_to_telemetry = resource_to_telemetry
        self.without_scope_info = without_scope_info
        self.const_labels = {label_name(k): v for k, v in (const_labels or {}).items()}
        self.max_exponential_buckets = max_exponential_buckets
        #: Series per metric, the overflow series included (0: no limit).
        self.cardinality_limit = cardinality_limit
        #: ``(metric name, points, limit)`` after a fold that sent points to an overflow series.
        self.on_overflow = on_overflow
        self._overflowed: dict[str, int] = defaultdict(int)
        self._families: dict[str, _Family] = {}
        #: (job, instance) -> [target_info labels, last update]
        self._targets: dict[tuple[str, str], list[Any]] = {}
        self._lock = threading.Lock()

    # --- folding ---------------------------------------------------------------------------

    def fold(self, request: Any, now: float | None = None) -> tuple[int, dict[str, int]]:
        """Fold a request in; returns (points kept, {reason: points dropped})."""
        now = time.time() if now is None else now
        kept = 0
        dropped: dict[str, int] = defaultdict(int)
        with self._lock:
            for rm in request.resource_metrics:
                base = self._resource_labels(rm.resource, now)
                for sm in rm.scope_metrics:
                    labels = dict(base)
                    if not self.without_scope_info:
                        scope = sm.scope
                        for kv in scope.attributes:
                            if kv.key not in ("name", "version", "schema_url"):
                                name = label_name("otel_scope_" + kv.key)
                                if name:
                                    labels[name] = any_to_string(kv.value)
                        if scope.name:
                            labels["otel_scope_name"] = scope.name
                        if scope.version:
                            labels["otel_scope_version"] = scope.version
                        if sm.schema_url:
                            labels["otel_scope_schema_url"] = sm.schema_url
                    for metric in sm.metrics:
                        kept += self._fold_metric(metric, labels, now, dropped)
            overflowed, self._overflowed = self._overflowed, defaultdict(int)
        if self.on_overflow is not None:
            for name, points in overflowed.items():
                self.on_overflow(name, points, self.cardinality_limit)
        return kept, dict(dropped)

    def _resource_labels(self, resource: Any, now: float) -> dict[str, str]:
        identity = resource_identity(resource, promote_all=self.resource_to_telemetry, const_labels=self.const_labels)
        if identity.target_info is not None:
            info = identity.target_info
            self._targets[(info["job"], info["instance"])] = [info, now]
        return identity.labels

    def _family(self, name: str, type_: str, help_: str, points: int, dropped: dict[str, int]) -> _Family | None:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = _Family(name, type_, help_)
        elif family.type != type_:
            dropped["type_conflict"] += points
            return None
        return family

    def _labels(self, point: Any, base: dict[str, str]) -> dict[str, str]:
        labels: dict[str, str] = {}
        for kv in point.attributes:
            name = label_name(kv.key)
            if not name:
                continue
            text = any_to_string(kv.value)
            labels[name] = f"{labels[name]};{text}" if name in labels else text
        labels.update(base)
        return labels

    def _fold_metric(self, metric: Any, base: dict[str, str], now: float, dropped: dict[str, int]) -> int:
        data = metric.WhichOneof("data")
        if data is None:
            return 0
        body = getattr(metric, data)  # getattr: the protobuf oneof's member
        points = body.data_points
        if not len(points):
            return 0
        if data == "gauge":
            kind, type_ = GAUGE, "gauge"
        elif data == "sum":
            if body.aggregation_temporality not in (DELTA, CUMULATIVE):
                dropped["unspecified_temporality"] += len(points)
                return 0
            kind, type_ = (MONOTONIC, "counter") if body.is_monotonic else (NON_MONOTONIC, "gauge")
        else:
            kind = OTHER
            type_ = "summary" if data == "summary" else "histogram"
            if data != "summary" and body.aggregation_temporality not in (DELTA, CUMULATIVE):
                dropped["unspecified_temporality"] += len(points)
                return 0
        name = metric_name(metric.name, metric.unit, kind, self.namespace)
        if not name:
            dropped["invalid_name"] += len(points)
            return 0
        family = self._family(name, type_, metric.description, len(points), dropped)
        if family is None:
            return 0
        delta = data not in ("gauge", "summary") and body.aggregation_temporality == DELTA
        kept = 0
        for point in points:
            if self._fold_point(family, data, point, base, delta=delta, now=now, dropped=dropped):
                kept += 1
        return kept

    def _fold_point(
        self, family: _Family, data: str, point: Any, base: dict[str, str], *, delta: bool, now: float, dropped: Any
    ) -> bool:
        labels = self._labels(point, base)
        key = tuple(sorted(labels.items()))
        series = family.series.get(key)
        if point.flags & NO_RECORDED_VALUE:
            family.series.pop(key, None)
            return False
        if series is None:
            limit = self.cardinality_limit
            overflow = family.overflow
            if limit and (len(family.series) >= limit - 1 or (overflow is not None and hash(key) in overflow.seen)):
                return self._fold_overflow(family, data, point, hash(key), delta=delta, now=now, dropped=dropped)
            series = family.series[key] = _Series(labels)
            series.start = point.start_time_unix_nano
        stamp = point.time_unix_nano
        if (stamp <= series.time) if delta else (stamp < series.time):
            dropped["out_of_order"] += 1
            return False
        if data in ("gauge", "sum"):
            value = point.as_double if point.WhichOneof("value") == "as_double" else float(point.as_int)
            series.value = series.value + value if delta and series.time else value
            if point.exemplars:
                found = _exemplar(point.exemplars[-1])
                if found is not None:
                    series.exemplars[0] = found[1]
        elif data == "histogram":
            self._fold_histogram(series, point, delta)
        elif data == "exponential_histogram":
            self._fold_exponential(series, point, delta)
        else:
            series.count = point.count
            series.sum = point.sum
            series.extra = [(q.quantile, q.value) for q in point.quantile_values]
        if not delta or not series.time:
            series.start = point.start_time_unix_nano or series.start
        series.time = stamp
        series.updated = now
        return True

    def _fold_overflow(
        self, family: _Family, data: str, point: Any, key: int, *, delta: bool, now: float, dropped: Any
    ) -> bool:
        if family.overflow is None:
            family.overflow = Overflow(
                self.const_labels, self.expiration, now, TRACKED_PER_LIMIT * self.cardinality_limit
            )
        monotonic = family.type == "counter"
        reason = family.overflow.add(data, point, key, delta=delta, monotonic=monotonic, now=now)
        if reason is not None:
            dropped[reason] += 1
            return False
        self._overflowed[family.name] += 1
        return True

    def _fold_histogram(self, series: _Series, point: Any, delta: bool) -> None:
        bounds = tuple(point.explicit_bounds)
        counts = list(point.bucket_counts) or [point.count]
        if len(counts) != len(bounds) + 1:  # malformed: keep count and sum only
            bounds, counts = (), [point.count]
        if delta and series.time and series.extra is not None and series.extra[0] == bounds:
            old = series.extra[1]
            series.extra = (bounds, [a + b for a, b in zip(old, counts, strict=True)])
            series.count += point.count
            if point.HasField("sum"):
                series.sum = (series.sum or 0.0) + point.sum
        else:
            if series.extra is not None and series.extra[0] != bounds:
                series.exemplars.clear()
            series.extra = (bounds, counts)
            series.count = point.count
            series.sum = point.sum if point.HasField("sum") else None
        for ex in point.exemplars:
            found = _exemplar(ex)
            if found is not None:
                series.exemplars[_bucket_index(bounds, found[0])] = found[1]

    def _fold_exponential(self, series: _Series, point: Any, delta: bool) -> None:
        incoming = _Exp(point)
        if delta and series.time and isinstance(series.extra, _Exp):
            series.extra.add(incoming)
            series.count += point.count
            if point.HasField("sum"):
                series.sum = (series.sum or 0.0) + point.sum
        else:
            series.extra = incoming
            series.count = point.count
            series.sum = point.sum if point.HasField("sum") else None
        # Exemplars are placed in buckets when the histogram is rendered.
        for ex in point.exemplars:
            found = _exemplar(ex)
            if found is not None:
                series.exemplars[len(series.exemplars) % 16] = found[1]

    # --- exposition ------------------------------------------------------------------------

    def expire(self, now: float | None = None) -> int:
        """Remove series and targets not updated within ``expiration``; returns series removed."""
        now = time.time() if now is None else now
        limit = now - self.expiration
        removed = 0
        with self._lock:
            for name in list(self._families):
                family = self._families[name]
                stale = [key for key, series in family.series.items() if series.updated < limit]
                for key in stale:
                    del family.series[key]
                removed += len(stale)
                overflow = family.overflow
                if overflow is not None:
                    overflow.seen.rotate(now)
                    if overflow.series.updated < limit:
                        family.overflow = None
                        removed += 1
                if not family.series and family.overflow is None:
                    del self._families[name]
            for target in [t for t, (_, updated) in self._targets.items() if updated < limit]:
                del self._targets[target]
        return removed

    def footprint(self) -> tuple[int, int]:
        """(series held, label sets remembered by their hash in overflow series)."""
        with self._lock:
            series = tracked = 0
            for family in self._families.values():
                series += len(family.series)
                if family.overflow is not None:
                    series += 1
                    tracked += len(family.overflow.seen)
            return series, tracked

    def families(self) -> list[Metric]:
        """The current state as prometheus-client metric families (``target_info`` first)."""
        out: list[Metric] = []
        with self._lock:
            if self._targets:
                name = f"{self.namespace}_target_info" if self.namespace else "target_info"
                info = Metric(name, "Target metadata", "gauge")
                for labels, _ in self._targets.values():
                    info.samples.append(Sample(name, labels, 1.0))
                out.append(info)
            for family in self._families.values():
                out.append(self._render(family))
        return out

    def _render(self, family: _Family) -> Metric:
        name = family.name
        every = list(family.series.values())
        if family.overflow is not None:
            every.append(family.overflow.series)
        if family.type == "counter":
            metric = Metric(name.removesuffix("_total"), family.help, "counter")
            for series in every:
                metric.samples.append(Sample(name, series.labels, series.value, None, series.exemplars.get(0)))
            return metric
        metric = Metric(name, family.help, family.type)
        samples = metric.samples
        if family.type == "gauge":
            for series in every:
                samples.append(Sample(name, series.labels, series.value))
        elif family.type == "summary":
            for series in every:
                for quantile, value in series.extra or ():
                    samples.append(Sample(name, {**series.labels, "quantile": format_float(quantile)}, value))
                samples.append(Sample(f"{name}_count", series.labels, float(series.count)))
                samples.append(Sample(f"{name}_sum", series.labels, series.sum or 0.0))
        else:
            for series in every:
                self._render_histogram(name, series, samples)
        return metric

    def _render_histogram(self, name: str, series: _Series, samples: list[Sample]) -> None:
        if isinstance(series.extra, _Exp):
            bounds, counts = series.extra.classic(self.max_exponential_buckets)
            exemplars: dict[int, Exemplar] = {}
            for ex in series.exemplars.values():
                exemplars[_bucket_index(bounds, ex.value)] = ex
        else:
            bounds, counts = series.extra if series.extra is not None else ((), [series.count])
            exemplars = series.exemplars
        bucket = f"{name}_bucket"
        cumulative = 0
        for index, bound in enumerate(bounds):
            cumulative += counts[index]
            labels = {**series.labels, "le": format_float(bound)}
            samples.append(Sample(bucket, labels, float(cumulative), None, exemplars.get(index)))
        samples.append(
            Sample(bucket, {**series.labels, "le": "+Inf"}, float(series.count), None, exemplars.get(len(bounds)))
        )
        samples.append(Sample(f"{name}_count", series.labels, float(series.count)))
        if series.sum is not None:
            samples.append(Sample(f"{name}_sum", series.labels, series.sum))
