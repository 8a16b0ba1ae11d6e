"""The per-metric series limit the ``prometheus`` and ``prometheusremotewrite`` exporters share.

As in the OpenTelemetry metrics SDK (``cardinality_limit``, default 2000): a metric
holds at most ``cardinality_limit`` series, the overflow series included. A label set
first seen when the metric already has ``cardinality_limit - 1`` series is folded into
the one series ``{otel_metric_overflow="true"}`` (the point's own labels dropped), so
totals stay right while the memory a cardinality burst can take stays bounded.

``Generations`` remembers overflowed (and, for remote write, admitted) label sets by
their 64-bit hash only, in two dicts swapped every ``period`` seconds: an entry not seen
for two periods is gone, without a timestamp per entry. ``OverflowReport`` counts the
overflowed points (``meshwatch_exporter_overflowed_points_total``) and logs at most one
warning per metric per ``interval``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..telemetry import Telemetry

__all__ = ["OVERFLOW_LABEL", "DEFAULT_LIMIT", "TRACKED_PER_LIMIT", "Generations", "OverflowReport"]

#: ``otel.metric.overflow`` translated to a Prometheus label name.
OVERFLOW_LABEL = "otel_metric_overflow"
DEFAULT_LIMIT = 2000
#: Label sets an overflow series remembers (by hash, ~0.2 KB each), per unit of the limit:
#: 200,000 (~40 MB) for the default limit, so even a burst that never ends stays bounded.
TRACKED_PER_LIMIT = 100


class Generations:
    """``hash -> value`` that forgets entries not touched for between one and two ``period``s."""

    __slots__ = ("_current", "_previous", "_rotated", "period")

    def __init__(self, period: float, now: float | None = None) -> None:
        self.period = period
        self._current: dict[int, Any] = {}
        self._previous: dict[int, Any] = {}
        self._rotated = time.time() if now is None else now

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def __contains__(self, key: int) -> bool:
        return key in self._current or key in self._previous

    def get(self, key: int, default: Any = None) -> Any:
        if key in self._current:
            return self._current[key]
        if key in self._previous:  # seen again: keep it
            value = self._current[key] = self._previous.pop(key)
            return value
        return default

    def set(self, key: int, value: Any) -> None:
        self._previous.pop(key, None)
        self._current[key] = value

    def rotate(self, now: float | None = None) -> int:
        """Forget what was not touched in the last two periods; returns the entries forgotten."""
        now = time.time() if now is None else now
        if now - self._rotated < self.period:
            return 0
        forgotten = len(self._previous)
        self._previous, self._current = self._current, {}
        self._rotated = now
        return forgotten


class OverflowReport:
    """Counts overflowed points per exporter and warns, rate-limited, naming the metric."""

    def __init__(self, exporter: str, telemetry: Telemetry, log: logging.Logger, interval: float = 60.0) -> None:
        self.exporter = exporter
        self.log = log
        self.interval = interval
        self._counter = telemetry.counter(
            "meshwatch_exporter_overflowed_points",
            "Metric points folded into the otel_metric_overflow series (the metric had cardinality_limit series)",
            ("exporter", "signal"),
        )
        self._warned: dict[str, float] = {}
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, metric: str, points: int, limit: int, now: float | None = None) -> None:
        if not points:
            return
        self._counter.labels(self.exporter, "metrics").inc(points)
        now = time.monotonic() if now is None else now
        with self._lock:
            self._pending[metric] = self._pending.get(metric, 0) + points
            last = self._warned.get(metric)
            if last is not None and now - last < self.interval:
                return
            if len(self._warned) > 10_000:  # names themselves bursting: keep this bounded too
                self._warned.clear()
                self._pending = {metric: self._pending[metric]}
            self._warned[metric] = now
            count = self._pending.pop(metric)
        self.log.warning(
            "%s: metric %s has reached its cardinality_limit of %d series; %d points went into its "
            '%s="true" series (warning at most every %.0fs per metric)',
            self.exporter,
            metric,
            limit,
            count,
            OVERFLOW_LABEL,
            self.interval,
        )
