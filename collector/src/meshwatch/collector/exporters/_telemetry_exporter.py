"""Sent / dropped counting for the exporters that do not go through ``queued_exporter``
(the pull-based ``prometheus`` exporter), on the contract's instruments."""

from __future__ import annotations

from ..telemetry import Telemetry

__all__ = ["ExporterCounters"]


class ExporterCounters:
    def __init__(self, telemetry: Telemetry, exporter: str, signal: str) -> None:
        self._sent = telemetry.exporter_sent
        self._dropped = telemetry.exporter_dropped
        self.labels = (exporter, signal)

    def sent(self, items: int) -> None:
        if items:
            self._sent.labels(*self.labels).inc(items)

    def dropped(self, reason: str, items: int) -> None:
        if items:
            self._dropped.labels(*self.labels, reason).inc(items)
