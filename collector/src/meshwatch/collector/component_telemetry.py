"""The one place part B's components (processors, connectors, Prometheus and
Elasticsearch exporters) get their self-telemetry instruments from.

The collector core owns the self-telemetry served on :8888 and hands it out as
``host.telemetry()`` (``meshwatch.collector.telemetry.Telemetry``). This adapter
uses the core's own instruments for the contract's names (e.g.
``processor_filtered``) and registers part B's additional instruments on the core's
registry; given a bare ``CollectorRegistry`` (tests) or no host at all it falls
back to creating them itself (``FALLBACK`` registry). Instruments are created once
per registry and name, so two components of the same type share one metric family
with their own labels.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ComponentTelemetry", "FALLBACK", "registry_of"]

#: Used when the host gives no registry (unit tests, or before the core serves one).
FALLBACK = CollectorRegistry(auto_describe=True)

_lock = threading.Lock()
#: registry -> {name: instrument}; weak, so a registry that is gone (a stopped collector in
#: a test process) takes its instruments along and a new one never inherits them.
_instruments: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Any]] = weakref.WeakKeyDictionary()


def _provided(host: Any) -> Any:
    telemetry = getattr(host, "telemetry", None)
    if telemetry is None:
        return None
    try:
        return telemetry()
    except (NotImplementedError, AttributeError):
        return None


def registry_of(host: Any) -> CollectorRegistry:
    """The collector's self-telemetry registry from ``host.telemetry()``, else ``FALLBACK``."""
    provided = _provided(host)
    if isinstance(provided, CollectorRegistry):
        return provided
    inner = getattr(provided, "registry", None)
    if isinstance(inner, CollectorRegistry):
        return inner
    return FALLBACK


class ComponentTelemetry:
    """Named instruments on one registry; ``counter(...)`` returns the same object for the same name."""

    def __init__(self, registry: CollectorRegistry | None = None, core: Any = None) -> None:
        self.registry = registry or FALLBACK
        #: The core's ``Telemetry`` object when the host has one (its instruments win).
        self.core = core

    @classmethod
    def of(cls, host: Any) -> ComponentTelemetry:
        provided = _provided(host)
        return cls(registry_of(host), None if isinstance(provided, CollectorRegistry) else provided)

    def _get(self, kind: type, name: str, documentation: str, labelnames: tuple[str, ...], **extra: Any) -> Any:
        with _lock:
            known = _instruments.setdefault(self.registry, {})
            instrument = known.get(name)
            if instrument is None:
                instrument = known[name] = kind(name, documentation, labelnames, registry=self.registry, **extra)
            return instrument

    def counter(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> Counter:
        """``name`` without ``_total`` (prometheus_client adds it)."""
        return self._get(Counter, name, documentation, labelnames)

    def gauge(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> Gauge:
        return self._get(Gauge, name, documentation, labelnames)

    def histogram(
        self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: tuple[float, ...]
    ) -> Histogram:
        return self._get(Histogram, name, documentation, labelnames, buckets=buckets)

    # --- the names of docs/telemetry-contract.md -----------------------------------------

    def filtered_items(self) -> Counter:
        existing = getattr(self.core, "processor_filtered", None)
        if existing is not None:
            return existing
        return self.counter(
            "meshwatch_processor_filtered_items",
            "Items removed on purpose by a processor's configuration (not a loss)",
            ("processor", "signal", "reason"),
        )

    def redactions(self) -> Counter:
        return self.counter(
            "meshwatch_processor_redactions",
            "Attribute values and log bodies masked or hashed by a redaction processor",
            ("processor", "signal", "reason"),
        )
