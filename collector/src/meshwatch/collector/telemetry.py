"""The collector's self-telemetry: the metric names of docs/telemetry-contract.md, in one place.

One ``Telemetry`` per running collector, created by the service and handed to every
component in its ``CreateSettings.telemetry``. Components count through its contract
instruments, and register any instrument of their own with ``counter``/``gauge``/
``histogram`` on it: nothing else in the collector creates a metric, so the names
cannot drift from the contract, and the registry (a private
``prometheus_client.CollectorRegistry``, not the global one) is the only place its
series live, so two collectors in one process never share or clash series.
"""

from __future__ import annotations

import contextlib
import resource
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from . import __version__

__all__ = ["Telemetry", "QueueStats", "MemoryGate", "TelemetryClash"]

#: Export call durations: from a local sub-millisecond send to a backend timing out.
SEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class TelemetryClash(ValueError):
    """A metric name asked for again with another kind or other labels (it would be a second family)."""


class MemoryGate(Protocol):
    """Who decides whether the collector can take ``nbytes`` more (the memory limiter)."""

    def refuses(self, nbytes: int) -> bool:
        """True: a request of ``nbytes`` on the wire would take the collector over its limit."""
        ...


class QueueStats:
    """What a queue reports about itself; read at scrape time, so nothing is updated per batch."""

    def __init__(self, exporter: str, signal: str, read: Callable[[], tuple[int, int, int, int, float]]) -> None:
        self.exporter = exporter
        self.signal = signal
        #: () -> (size_items, capacity_items, size_bytes, capacity_bytes, oldest_age_seconds)
        self.read = read


class _QueueCollector:
    """Collects every registered queue's gauges at scrape time."""

    def __init__(self) -> None:
        self.queues: dict[tuple[str, str], QueueStats] = {}

    def collect(self) -> Iterable[Any]:
        names = (
            ("meshwatch_queue_size_items", "Items waiting in the exporter's queue"),
            ("meshwatch_queue_capacity_items", "The queue's limit in items"),
            ("meshwatch_queue_size_bytes", "Bytes waiting in the exporter's queue"),
            ("meshwatch_queue_capacity_bytes", "The queue's limit in bytes"),
            ("meshwatch_queue_oldest_item_age_seconds", "Age of the oldest unsent batch (0 when empty)"),
        )
        families = [GaugeMetricFamily(n, h, labels=["exporter", "signal"]) for n, h in names]
        for stats in list(self.queues.values()):
            try:
                values = stats.read()
            except Exception:  # noqa: S112 - a queue being closed must not break the scrape
                continue
            for family, value in zip(families, values, strict=True):
                family.add_metric([stats.exporter, stats.signal], float(value))
        yield from families


class _HeldCollector:
    """``meshwatch_collector_held_bytes{component}``: what each component says it holds in memory."""

    def __init__(self) -> None:
        self.readers: dict[str, Callable[[], int]] = {}

    def read(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for name, read in list(self.readers.items()):
            try:
                held[name] = int(read())
            except Exception:  # noqa: S112 - a component being stopped must not break the limiter or a scrape
                continue
        return held

    def collect(self) -> Iterable[Any]:
        family = GaugeMetricFamily(
            "meshwatch_collector_held_bytes",
            "Bytes of telemetry a component holds in memory (in memory queues, pending, in flight, series)",
            labels=["component"],
        )
        for name, value in self.read().items():
            family.add_metric([name], float(value))
        yield family


class _KafkaLagCollector:
    """``meshwatch_kafka_receiver_lag_records``: what each kafka receiver last measured, read at scrape time."""

    def __init__(self) -> None:
        self.readers: dict[str, Callable[[], dict[tuple[str, int], int]]] = {}

    def collect(self) -> Iterable[Any]:
        family = GaugeMetricFamily(
            "meshwatch_kafka_receiver_lag_records",
            "Records of an assigned partition not yet accepted by the pipeline (high watermark - next offset)",
            labels=["receiver", "topic", "partition"],
        )
        for receiver, read in list(self.readers.items()):
            try:
                lags = read()
            except Exception:  # noqa: S112 - a receiver being stopped must not break the scrape
                continue
            for (topic, partition), lag in sorted(lags.items()):
                family.add_metric([receiver, topic, str(partition)], float(lag))
        yield family


#: The documented refusal reasons (docs/telemetry-contract.md): each gets a zero series per
#: receiver, transport and signal at start, so ``rate(meshwatch_receiver_refused_items_total[5m])``
#: is 0 rather than absent before the first refusal (alerts and pint's series check read it).
REFUSED_REASONS = (
    "malformed",
    "invalid_id",
    "too_large",
    "unsupported_media_type",
    "unauthenticated",
    "queue_full",
    "memory_limit",
    "concurrency_limit",
    "timeout",
    "shutting_down",
)
#: The documented reasons an exporter drops items for good, zero from the start likewise.
DROPPED_REASONS = ("rejected", "queue_corrupt", "expired")


class Telemetry:
    """Counters, histograms and gauges named exactly as the telemetry contract says."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        #: name (without ``_total``) -> (kind, label names, instrument): every instrument on ``registry``,
        #: the contract's and the components' own, so one name is one family whoever asks for it.
        self._instruments: dict[str, tuple[type, tuple[str, ...], Any]] = {}
        #: ``receiver_accepted`` children by label values (see ``accepted``).
        self._accepted_children: dict[tuple[str, str, str], Any] = {}
        r = self.registry
        self.receiver_accepted = self.counter(
            "meshwatch_receiver_accepted_items",
            "Items acknowledged to the sender (durably queued)",
            ["receiver", "transport", "signal"],
        )
        self.receiver_refused = self.counter(
            "meshwatch_receiver_refused_items",
            "Items answered with an error",
            ["receiver", "transport", "signal", "reason"],
        )
        self.exporter_queued = self.counter(
            "meshwatch_exporter_queued_items", "Items written to the exporter's queue", ["exporter", "signal"]
        )
        self.exporter_sent = self.counter(
            "meshwatch_exporter_sent_items", "Items accepted by the backend", ["exporter", "signal"]
        )
        self.exporter_failed = self.counter(
            "meshwatch_exporter_failed_items",
            "Items of a failed send attempt (still queued, retried)",
            ["exporter", "signal", "reason"],
        )
        self.exporter_dropped = self.counter(
            "meshwatch_exporter_dropped_items", "Items that will never be delivered", ["exporter", "signal", "reason"]
        )
        self.exporter_send_duration = self.histogram(
            "meshwatch_exporter_send_duration_seconds",
            "One export call, success or not",
            ["exporter", "signal"],
            buckets=SEND_BUCKETS,
        )
        self.exporter_backend_up = self.gauge(
            "meshwatch_exporter_backend_up",
            "1 if the last export attempt reached the backend, else 0",
            ["exporter", "signal"],
        )
        self.collector_info = self.gauge("meshwatch_collector_info", "Always 1", ["version"])
        self.collector_info.labels(__version__).set(1)
        self.memory_limit = self.gauge(
            "meshwatch_collector_memory_limit_bytes", "The memory limiter's limit (0: no limiter)", []
        )
        self._queues = _QueueCollector()
        r.register(self._queues)
        self._held = _HeldCollector()
        r.register(self._held)
        self._gates: list[MemoryGate] = []
        #: Bytes of the requests being decoded by the receivers (``reserve_decoding``).
        self.decoding_bytes = 0
        self._decoding_lock = threading.Lock()
        self.kafka_rebalances = self.counter(
            "meshwatch_kafka_receiver_rebalances",
            "Partition assignment changes of a kafka receiver's consumer",
            ["receiver", "event"],  # assigned, revoked, lost
        )
        self.kafka_paused = self.gauge(
            "meshwatch_kafka_receiver_paused",
            "1 while a kafka receiver has paused consumption because the pipeline pushes back",
            ["receiver"],
        )
        self.kafka_pauses = self.counter(
            "meshwatch_kafka_receiver_pauses", "Times a kafka receiver paused consumption", ["receiver"]
        )
        self.kafka_committed = self.counter(
            "meshwatch_kafka_receiver_committed_records",
            "Records whose offsets a kafka receiver marked for commit, after the pipeline accepted them",
            ["receiver", "topic"],
        )
        self._kafka_lag = _KafkaLagCollector()
        r.register(self._kafka_lag)
        self.lb_backend_up = self.gauge(
            "meshwatch_loadbalancer_backend_up",
            "1 while a loadbalancing exporter's backend is in its hash ring, 0 while it is out (unhealthy)",
            ["exporter", "signal", "backend"],
        )
        self.lb_rerouted = self.counter(
            "meshwatch_loadbalancer_rerouted_items",
            "Items moved from a backend's queue to the other backends (it became unhealthy or was removed)",
            ["exporter", "signal", "backend", "reason"],  # unhealthy, removed
        )
        self.lb_backend_changes = self.counter(
            "meshwatch_loadbalancer_backend_changes",
            "Changes of a loadbalancing exporter's backend set",
            ["exporter", "signal", "event"],  # added, removed, unhealthy, healthy
        )
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        # Declared from the start (HELP and TYPE, no series until a processor filters), so the
        # family a dashboard reads is known to Prometheus whether or not a filtering processor runs.
        self.processor_filtered = self.counter(
            "meshwatch_processor_filtered_items",
            "Items removed on purpose by configuration (not a loss)",
            ["processor", "signal", "reason"],
        )
        #: Bytes of the batches inside the memory limiters' ``consume`` right now (``pass_through``).
        self.limiter_inflight_bytes = 0
        self.started_at = time.time()

    # --- small helpers, so call sites read as sentences ------------------------------------

    def known_receiver(self, receiver: str, transports: Iterable[str], signals: Iterable[str]) -> None:
        """Zero series for a receiver's accepted and refused counters (before any request)."""
        signals = list(signals)
        for transport in transports:
            for signal in signals:
                self.receiver_accepted.labels(receiver, transport, signal)
                for reason in REFUSED_REASONS:
                    self.receiver_refused.labels(receiver, transport, signal, reason)

    def known_exporter(self, exporter: str, signal: str) -> None:
        """Zero series for an exporter's queued, sent and dropped counters (before any send).

        ``failed`` has no zero series: its reason is the backend's own error class, unknown
        until a send fails (alerts/pint.hcl says so for pint's series check).
        """
        self.exporter_queued.labels(exporter, signal)
        self.exporter_sent.labels(exporter, signal)
        for reason in DROPPED_REASONS:
            self.exporter_dropped.labels(exporter, signal, reason)

    def accepted(self, receiver: str, transport: str, signal: str, items: int) -> None:
        # Once per request: the labelled child is looked up once per label set, not per call
        # (``labels()`` validates and hashes its arguments under a lock each time).
        key = (receiver, transport, signal)
        child = self._accepted_children.get(key)
        if child is None:
            child = self._accepted_children[key] = self.receiver_accepted.labels(*key)
        child.inc(items)

    def refused(self, receiver: str, transport: str, signal: str, reason: str, items: int) -> None:
        self.receiver_refused.labels(receiver, transport, signal, reason).inc(items)

    # --- instruments: the contract's and the components' own, all on ``registry`` --------------

    def counter(self, name: str, documentation: str, labelnames: Sequence[str]) -> Counter:
        """The counter ``name`` (without ``_total``; prometheus_client adds it), created on first ask.

        Every component that asks for one name gets the one instrument (a component of type
        ``x`` used in two pipelines shares its family, each with its own labels; a component
        asking for a contract name gets the contract's instrument). Asking again with another
        kind or other labels raises ``TelemetryClash``, naming both.
        """
        return self._instrument(Counter, name.removesuffix("_total"), documentation, labelnames)

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str]) -> Gauge:
        return self._instrument(Gauge, name, documentation, labelnames)

    def histogram(
        self, name: str, documentation: str, labelnames: Sequence[str], *, buckets: Sequence[float]
    ) -> Histogram:
        return self._instrument(Histogram, name, documentation, labelnames, buckets=tuple(buckets))

    def _instrument(self, kind: type, name: str, documentation: str, labelnames: Sequence[str], **extra: Any) -> Any:
        labels = tuple(labelnames)
        with self._lock:
            known = self._instruments.get(name)
            if known is None:
                instrument = kind(name, documentation, labels, registry=self.registry, **extra)
                self._instruments[name] = (kind, labels, instrument)
                return instrument
            known_kind, known_labels, instrument = known
            if known_kind is not kind or known_labels != labels:
                raise TelemetryClash(
                    f"self-telemetry metric {name} is a {known_kind.__name__.lower()} with labels "
                    f"{list(known_labels)}; asked for as a {kind.__name__.lower()} with labels {list(labels)}"
                )
            return instrument

    def filtered(self, processor: str, signal: str, reason: str, items: int) -> None:
        """For processors that drop items on purpose (sampling, filtering)."""
        self.processor_filtered.labels(processor, signal, reason).inc(items)

    def dropped(self, exporter: str, signal: str, reason: str, items: int) -> None:
        self.exporter_dropped.labels(exporter, signal, reason).inc(items)

    def register_queue(self, stats: QueueStats) -> None:
        self._queues.queues[(stats.exporter, stats.signal)] = stats

    def unregister_queue(self, exporter: str, signal: str) -> None:
        self._queues.queues.pop((exporter, signal), None)

    def register_held(self, component: str, read: Callable[[], int]) -> None:
        """``read()`` gives the bytes of telemetry ``component`` holds in memory right now.

        The memory limiter decides on the sum (what the collector holds and will let go
        of), not only on the process RSS, which the allocator need not give back.
        """
        self._held.readers[component] = read

    def unregister_held(self, component: str) -> None:
        self._held.readers.pop(component, None)

    def register_kafka_lag(self, receiver: str, read: Callable[[], dict[tuple[str, int], int]]) -> None:
        """``read()`` gives ``{(topic, partition): lag in records}`` for the receiver's assigned partitions."""
        self._kafka_lag.readers[receiver] = read

    def unregister_kafka_lag(self, receiver: str) -> None:
        self._kafka_lag.readers.pop(receiver, None)

    def held_bytes(self) -> dict[str, int]:
        """``{component: bytes held}`` from every registered reader."""
        return self._held.read()

    # --- admission by size, before a request is decoded -------------------------------------

    def register_memory_gate(self, gate: MemoryGate) -> None:
        self._gates.append(gate)

    def unregister_memory_gate(self, gate: MemoryGate) -> None:
        with contextlib.suppress(ValueError):
            self._gates.remove(gate)

    def reserve_decoding(self, nbytes: int) -> bool:
        """Before decoding a request of ``nbytes``: False if a memory gate refuses it, else count
        it in ``decoding_bytes`` (live, read by the gates) until ``release_decoding``.

        Decoding is where a large request costs most (its bytes and the decoded message), and
        it happens before any processor sees the batch; checked and counted under one lock, so
        concurrent large requests see each other.
        """
        with self._decoding_lock:
            if any(gate.refuses(nbytes) for gate in self._gates):
                return False
            self.decoding_bytes += nbytes
            return True

    def release_decoding(self, nbytes: int) -> None:
        with self._decoding_lock:
            self.decoding_bytes -= nbytes

    def pass_through(self, nbytes: int) -> None:
        """A memory limiter hands on a batch of ``nbytes`` (negative: it came back); every limiter
        of this collector reads the sum, ``limiter_inflight_bytes``."""
        with self._decoding_lock:
            self.limiter_inflight_bytes += nbytes

    def memory_refuses(self, nbytes: int = 0) -> bool:
        """Whether a memory gate would refuse ``nbytes`` more now (0: refusing already)."""
        return any(gate.refuses(nbytes) for gate in self._gates)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
