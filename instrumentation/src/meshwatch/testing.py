"""Test helpers for services that use meshwatch: capture spans, metrics and logs in memory.

Installed as a pytest plugin with meshwatch, so a test only asks for the fixture::

    def test_checkout(meshwatch_capture, client):
        client.get("/checkout/42")
        span = meshwatch_capture.span("GET /checkout/{order_id}")
        assert span.attributes["http.response.status_code"] == 200
        assert meshwatch_capture.metric("http.server.request.duration", **{"http.route": "/checkout/{order_id}"})
        assert meshwatch_capture.logs[0].log_record.body == "order paid"

If the application did not call ``meshwatch.init()``, the fixture does, exporting
nowhere. What the fixture shows is what meshwatch would export (redaction
applied). Importing this module costs nothing until the fixture is used.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

__all__ = ["Capture", "MetricPoint", "capture", "meshwatch_capture"]


@dataclass(frozen=True)
class MetricPoint:
    """One series of one metric, as recorded since the capture started.

    ``value`` is the sum or gauge value (for monotonic sums: the increase since
    the capture started); for histograms ``count`` and ``sum`` are the increase
    and ``value`` is None.
    """

    name: str
    attributes: dict[str, Any]
    value: float | None = None
    count: int | None = None
    sum: float | None = None
    exemplar_trace_ids: tuple[str, ...] = ()


class Capture:
    """Spans, log records and metric points seen while attached to meshwatch's pipeline."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.logs: list[Any] = []
        self._lock = threading.Lock()
        self._latest_metrics: Any = None
        self._baseline: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[float, float]] = {}
        self._state: Any = None

    # --- wiring -------------------------------------------------------------------

    def _on_span(self, span: Any) -> None:
        from ._traces import redact_span

        if self._state is not None:
            redact_span(self._state.redactor, span)
        with self._lock:
            self.spans.append(span)

    def _on_log(self, record: Any) -> None:
        with self._lock:
            self.logs.append(record)

    def _on_metrics(self, data: Any) -> None:
        self._latest_metrics = data

    def attach(self, state: Any) -> None:
        self._state = state
        state.span_processor.add_listener(self._on_span)
        if state.handler is not None:
            state.handler.sinks.append(self._on_log)
        if state.metric_fan_out is not None:
            state.metric_fan_out.listeners.append(self._on_metrics)
            self._baseline = {key: (v, s) for key, v, s in self._flatten(self._collect())}

    def detach(self) -> None:
        state = self._state
        if state is None:
            return
        state.span_processor.remove_listener(self._on_span)
        if state.handler is not None and self._on_log in state.handler.sinks:
            state.handler.sinks.remove(self._on_log)
        if state.metric_fan_out is not None and self._on_metrics in state.metric_fan_out.listeners:
            state.metric_fan_out.listeners.remove(self._on_metrics)
        self._state = None

    # --- queries --------------------------------------------------------------------

    def clear(self) -> None:
        """Forget what was captured so far (metrics: count from now on)."""
        with self._lock:
            self.spans.clear()
            self.logs.clear()
        if self._state is not None and self._state.metric_fan_out is not None:
            self._baseline = {key: (v, s) for key, v, s in self._flatten(self._collect())}

    def span(self, name: str) -> Any:
        """The one finished span called ``name``; fails listing the names seen otherwise."""
        found = [s for s in self.spans if s.name == name]
        if len(found) != 1:
            raise AssertionError(
                f"expected one span named {name!r}, found {len(found)}; spans: {[s.name for s in self.spans]}"
            )
        return found[0]

    def log_messages(self) -> list[str]:
        return [str(r.log_record.body) for r in self.logs]

    def _collect(self) -> Any:
        state = self._state
        if state is None or state.periodic_reader is None:
            raise RuntimeError(
                "meshwatch exports no metrics in this process (metrics_exporter=none), so none can be captured"
            )
        self._latest_metrics = None
        state.periodic_reader.force_flush(timeout_millis=10_000)
        return self._latest_metrics

    @staticmethod
    def _flatten(data: Any) -> Iterator[tuple[tuple[str, tuple[tuple[str, Any], ...]], float, float]]:
        if data is None:
            return
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    for point in metric.data.data_points:
                        key = (metric.name, tuple(sorted((point.attributes or {}).items())))
                        if hasattr(point, "bucket_counts"):
                            yield key, float(point.count), float(point.sum)
                        else:
                            yield key, float(point.value), 0.0

    def metrics(self) -> list[MetricPoint]:
        """Collect now; every series recorded since the capture started (or was cleared)."""
        data = self._collect()
        points: list[MetricPoint] = []
        if data is None:
            return points
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    monotonic = getattr(metric.data, "is_monotonic", False)
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        key = (metric.name, tuple(sorted(attributes.items())))
                        base_value, base_sum = self._baseline.get(key, (0.0, 0.0))
                        if hasattr(point, "bucket_counts"):
                            count = int(point.count - base_value)
                            if count <= 0:
                                continue
                            exemplars = tuple(format(e.trace_id, "032x") for e in point.exemplars if e.trace_id)
                            points.append(
                                MetricPoint(metric.name, attributes, None, count, point.sum - base_sum, exemplars)
                            )
                        else:
                            value = point.value - base_value if monotonic else point.value
                            if monotonic and value <= 0:
                                continue
                            points.append(MetricPoint(metric.name, attributes, value))
        return points

    def metric(self, name: str, **attributes: Any) -> MetricPoint | None:
        """The series of ``name`` whose attributes include ``attributes`` (dots given as ``**{"http.route": …}``)."""
        for point in self.metrics():
            if point.name == name and all(point.attributes.get(k) == v for k, v in attributes.items()):
                return point
        return None


def capture() -> Iterator[Capture]:
    """Attach a ``Capture`` to meshwatch (initialising it, exporting nowhere, if needed); detach afterwards."""
    from . import _setup

    state = _setup.state()
    if state is None or not state.active:
        _setup.init(
            traces_exporter="none",
            metrics_exporter="none",
            logs_exporter="none",
            runtime_metrics=False,
            _capture_metrics=True,
        )
        state = _setup.state()
    result = Capture()
    result.attach(state)
    try:
        yield result
    finally:
        result.detach()


@pytest.fixture
def meshwatch_capture() -> Iterator[Capture]:
    """Spans (``.spans``, ``.span(name)``), log records (``.logs``) and metrics (``.metrics()``,
    ``.metric(name, **attributes)``) that meshwatch records during the test."""
    yield from capture()
