"""Sent / dropped counting for the exporters that do not go through ``queued_exporter``
(the pull-based ``prometheus`` exporter), with the contract's names and labels."""

from __future__ import annotations

from typing import Any

from ..component_telemetry import ComponentTelemetry

__all__ = ["ExporterCounters"]


class ExporterCounters:
    def __init__(self, exporter: str, signal: str) -> None:
        self.labels = (exporter, signal)
        self._sent: Any = None
        self._dropped: Any = None

    def bind(self, host: Any) -> None:
        telemetry = ComponentTelemetry.of(host)
        core = telemetry.core
        self._sent = getattr(core, "exporter_sent", None) or telemetry.counter(
            "meshwatch_exporter_sent_items", "Items accepted by the backend", ("exporter", "signal")
        )
        self._dropped = getattr(core, "exporter_dropped", None) or telemetry.counter(
            "meshwatch_exporter_dropped_items", "Items that will never be delivered", ("exporter", "signal", "reason")
        )

    def sent(self, items: int) -> None:
        if items and self._sent is not None:
            self._sent.labels(*self.labels).inc(items)

    def dropped(self, reason: str, items: int) -> None:
        if items and self._dropped is not None:
            self._dropped.labels(*self.labels, reason).inc(items)
