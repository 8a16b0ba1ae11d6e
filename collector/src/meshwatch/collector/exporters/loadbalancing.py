"""The ``loadbalancing`` exporter: each trace (or service) to one backend collector, over OTLP.

Config-compatible with contrib's ``loadbalancingexporter`` where the concepts match
(``routing_key``, ``protocol.otlp``, ``resolver.static``, ``resolver.dns``). A batch is cut
by routing key (``traceID``: spans and log records by trace id; ``service``: whole
resource entries by ``service.name``) and each part goes to the backend a consistent-hash
ring names (``_loadbalancing.ring``): the same key reaches the same backend while the set
is stable, and a change moves only the keys of the backend that came or went.

Every backend has its own ``otlp`` exporter with its own durable queue, in
``<queue dir>/<backend>/<signal>``; ``consume`` returns once every part is durable there.

What differs from contrib on purpose (its users lose data there: the sub-exporter and its
queue are deleted when the resolver drops a backend, and a dead backend keeps its keys):

* **Nothing queued is deleted.** A backend that is removed from the resolver, or that has
  refused connections or timed out for ``failover.unhealthy_after``, leaves the ring (new
  data for its keys goes to the others), its exporter is stopped and what its queue holds
  is read back and routed again through the new ring (``meshwatch_loadbalancer_rerouted_items_total``).
  A queue folder left by a backend no longer configured (a restart with a new list) is
  rerouted the same way at start.
* **Failover and return.** An unhealthy backend is probed (a TCP connect every
  ``failover.probe_interval``); after ``failover.healthy_probes`` successes in a row it gets
  a new exporter and its key range back. The last healthy backend is never taken out: if
  every backend fails, data waits in their queues.
* The queue must be persistent (``protocol.otlp.sending_queue.persistent``): rerouting reads it back.

Config::

    exporters:
      loadbalancing:
        routing_key: traceID          # traces and logs (default); service: traces, logs, metrics (metrics' default)
        protocol:
          otlp:                       # the otlp exporter's settings, endpoint excepted
            tls: {insecure: true}
            timeout: 5s
            sending_queue: {queue_size: 1000000}
        resolver:
          static: {hostnames: [gw-1:4317, gw-2:4317]}
          # dns: {hostname: gateways.internal, port: 4317, interval: 5s}
        failover: {unhealthy_after: 5s, probe_interval: 1s, healthy_probes: 2}
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from ..batch import Batch
from ..component import Capabilities, ComponentId, CreateSettings, Host, Kind, Refused, make_factory
from ..duration import Duration
from ..model import StrictModel
from ..queue import DiskQueue
from ..queued_exporter import QueuedExporter, queued_exporter, safe_name
from ..sender import QueueSettings, SendResult, TransientError
from ..signals import Signal
from ..telemetry import Telemetry
from ._loadbalancing.resolver import DnsResolver, Lookup, ResolverSettings, resolve_dns
from ._loadbalancing.ring import HashRing
from ._loadbalancing.routing import RoutingKey, split
from .otlp import GrpcSender, OtlpExporterConfig

__all__ = ["factory", "LoadBalancingConfig", "LoadBalancingExporter"]

log = logging.getLogger("meshwatch.collector.exporter")

#: The transient errors that mean "the backend is not there" (not back-pressure).
_DOWN = frozenset({"unavailable", "deadline_exceeded"})
#: How long ``consume`` keeps re-routing parts refused by a backend that is being taken out.
_SWITCH_WAIT = 5.0
_TICK = 0.25
#: In each backend's queue folder: its endpoint, so a folder left by a removed backend can be named.
_ENDPOINT_FILE = "endpoint"


class OtlpProtocol(OtlpExporterConfig):
    #: Ignored, as in contrib: each backend's endpoint comes from the resolver.
    endpoint: str = ""

    @field_validator("sending_queue")
    @classmethod
    def _durable(cls, queue: QueueSettings) -> QueueSettings:
        if not queue.enabled or not queue.persistent:
            raise ValueError(
                "the loadbalancing exporter needs each backend's queue on disk (enabled and persistent): "
                "when a backend goes away, its queued data is read back and sent to the others"
            )
        return queue


class ProtocolSettings(StrictModel):
    otlp: OtlpProtocol = Field(default_factory=OtlpProtocol)


class FailoverSettings(StrictModel):
    #: A backend refusing connections or timing out for this long leaves the ring; its queue is rerouted.
    unhealthy_after: Duration = Field(5.0, gt=0)
    #: How often an unhealthy backend is probed (a TCP connect).
    probe_interval: Duration = Field(1.0, gt=0)
    #: Successful probes in a row before it gets its key range back.
    healthy_probes: int = Field(2, ge=1)


class LoadBalancingConfig(StrictModel):
    #: ``traceID`` (traces and logs' default) or ``service`` (metrics' default, and the only one for metrics).
    routing_key: RoutingKey | None = None
    protocol: ProtocolSettings = Field(default_factory=ProtocolSettings)
    resolver: ResolverSettings
    failover: FailoverSettings = Field(default_factory=FailoverSettings)

    @model_validator(mode="before")
    @classmethod
    def _per_backend_settings(cls, data: Any) -> Any:
        misplaced = sorted(
            k for k in ("sending_queue", "retry_on_failure", "timeout") if isinstance(data, dict) and k in data
        )
        if misplaced:
            raise ValueError(
                f"{', '.join(misplaced)}: put them under protocol.otlp; here every backend has its own durable "
                "queue and retry (contrib's top-level queue, in front of the routing, has no counterpart)"
            )
        return data


class _WatchedSender:
    """A ``GrpcSender`` that remembers since when its backend has been unreachable."""

    thread_safe = True

    def __init__(self, inner: GrpcSender) -> None:
        self.inner = inner
        self.failing_since: float | None = None

    def start(self, host: Host) -> None:
        self.inner.start(host)

    def send(self, batch: Batch) -> SendResult:
        try:
            result = self.inner.send(batch)
        except TransientError as error:
            if error.reason in _DOWN and self.failing_since is None:
                self.failing_since = time.monotonic()
            raise
        self.failing_since = None
        return result

    def backend_reachable(self, timeout: float) -> bool:
        return self.inner.backend_reachable(timeout)

    def shutdown(self) -> None:
        self.inner.shutdown()


@dataclass
class _Backend:
    endpoint: str
    folder: Path  # <queue dir>/<backend>; its queue is folder/<signal>
    exporter: QueuedExporter | None = None
    sender: _WatchedSender | None = None
    healthy: bool = True
    removed: bool = False
    good_probes: int = 0
    probed_at: float = 0.0
    #: Its queue may hold data to reroute (it is out of the ring and not yet drained).
    to_drain: str = ""  # the reason ("unhealthy", "removed"), "" when nothing is to drain


class LoadBalancingExporter:
    """Routes each batch's parts to per-backend durable queues through a hash ring (module docstring)."""

    def __init__(self, settings: CreateSettings, config: LoadBalancingConfig, lookup: Lookup = resolve_dns) -> None:
        if settings.signal is None:
            raise ValueError("a loadbalancing exporter serves exactly one signal")
        self.id = settings.id
        self.signal: Signal = settings.signal
        self.config = config
        default: RoutingKey = "service" if self.signal is Signal.METRICS else "traceID"
        self.routing_key: RoutingKey = config.routing_key or default
        if self.signal is Signal.METRICS and self.routing_key != "service":
            raise ValueError("metrics are routed by service (routing_key: service); traceID is for traces and logs")
        self._labels = (str(self.id), str(self.signal))
        self._lookup = lookup
        self._backends: dict[str, _Backend] = {}
        self._ring = HashRing([])
        self._orphans: list[Path] = []  # queue folders of backends no longer configured, to reroute
        self._host: Host | None = None
        self._telemetry: Telemetry = settings.telemetry
        self._base: Path | None = None
        self._accepting = False
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._next_resolve = 0.0

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, host: Host) -> None:
        self._host = host
        queue = self.config.protocol.otlp.sending_queue
        self._base = Path(queue.directory) if queue.directory else host.storage_dir / "queues" / safe_name(self.id)
        endpoints = self._resolve() or []
        for endpoint in endpoints:
            self._add(endpoint)
        self._publish_ring()
        self._find_orphans()
        self._accepting = True
        self._watcher = threading.Thread(target=self._watch, name=f"loadbalancing {self.id}/{self.signal}", daemon=True)
        self._watcher.start()
        log.info(
            "%s/%s: routing by %s to %d backends (%s)",
            self.id,
            self.signal,
            self.routing_key,
            len(endpoints),
            ", ".join(endpoints) or "none yet",
        )

    def shutdown(self, timeout: float) -> None:
        """Stop taking data; every backend's exporter drains until ``timeout`` (in parallel), the rest stays queued."""
        self._accepting = False
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(max(5.0, timeout))
        exporters = [b.exporter for b in self._backends.values() if b.exporter is not None]
        threads = [threading.Thread(target=e.shutdown, args=(timeout,), daemon=True) for e in exporters]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout + 5.0)

    # --- the pipeline side -------------------------------------------------------------------

    def consume(self, batch: Batch) -> None:
        if not self._accepting:
            raise Refused("shutting_down", f"exporter {self.id} is not running", retryable=True)
        self._route(batch)

    def _route(self, batch: Batch) -> None:
        """Put every part of ``batch`` in the queue of the backend the current ring names.

        A part refused by a backend being taken out of the ring right now (its exporter is
        stopping) is routed again with the new ring. Parts already queued stay queued if
        another part is refused: a retry by the sender then duplicates them, never loses.
        """
        pending = [batch]
        deadline = time.monotonic() + _SWITCH_WAIT
        while True:
            ring = self._ring
            if not len(ring):
                raise Refused("backend_unavailable", f"{self.id}: no backend resolved yet", retryable=True)
            again: list[Batch] = []
            for part_of in pending:
                for dest, part in split(part_of, self.routing_key, ring.owner).items():
                    backend = self._backends.get(dest)
                    exporter = backend.exporter if backend is not None else None
                    if exporter is None:
                        again.append(part)
                        continue
                    try:
                        exporter.consume(part)
                    except Refused as refused:
                        if refused.reason != "shutting_down" or self._stop.is_set():
                            raise
                        again.append(part)
            if not again:
                return
            if time.monotonic() > deadline:
                raise Refused("backend_unavailable", f"{self.id}: the backend set is changing", retryable=True)
            pending = again
            self._changed.wait(0.05)

    # --- the backend set -----------------------------------------------------------------------

    def _resolve(self) -> list[str] | None:
        """The endpoints the resolver gives now (None: a DNS name that does not resolve: keep the last set)."""
        resolver = self.config.resolver
        if resolver.static is not None:
            return resolver.static.endpoints()
        dns = resolver.dns
        assert isinstance(dns, DnsResolver)
        self._next_resolve = time.monotonic() + dns.interval
        try:
            return self._lookup(dns.hostname, dns.port)
        except OSError as exc:
            log.warning("%s: cannot resolve %s (%s); keeping the last backends", self.id, dns.hostname, exc)
            return None

    def _add(self, endpoint: str) -> None:
        assert self._base is not None
        backend = self._backends.get(endpoint)
        if backend is not None:  # removed but not yet drained: it comes back through the probes
            backend.removed = False
            backend.healthy = backend.exporter is not None
            backend.to_drain = "unhealthy" if backend.to_drain else ""
            self._count_change("added")
            return
        backend = _Backend(endpoint, self._base / safe_name(endpoint))
        backend.folder.mkdir(parents=True, exist_ok=True)
        (backend.folder / _ENDPOINT_FILE).write_text(endpoint + "\n")  # names an orphaned folder's backend
        if backend.folder in self._orphans:  # its old queue is its own again
            self._orphans.remove(backend.folder)
        self._start_exporter(backend)
        self._backends[endpoint] = backend
        self._count_change("added")
        for reason in ("unhealthy", "removed"):
            self._telemetry.lb_rerouted.labels(*self._labels, endpoint, reason)

    def _start_exporter(self, backend: _Backend) -> None:
        assert self._host is not None
        otlp = self.config.protocol.otlp
        queue = otlp.sending_queue.model_copy(update={"directory": str(backend.folder)})
        config = OtlpExporterConfig.model_validate(
            {**otlp.model_dump(), "endpoint": backend.endpoint, "sending_queue": queue.model_dump()}
        )
        sender = _WatchedSender(GrpcSender(config, self.signal))
        exporter = queued_exporter(
            CreateSettings(ComponentId(str(self.id), backend.endpoint), self.signal, self._telemetry), config, sender
        )
        exporter.start(self._host)
        backend.exporter, backend.sender = exporter, sender

    def _stop_exporter(self, backend: _Backend) -> None:
        """Stop its workers now; what they had not sent stays in the queue folder."""
        if backend.exporter is not None:
            backend.exporter.shutdown(0.0)
            backend.exporter = backend.sender = None

    def _publish_ring(self) -> None:
        members = [e for e, b in self._backends.items() if b.healthy and not b.removed and b.exporter is not None]
        if set(members) != set(self._ring.members):
            self._ring = HashRing(members)
            self._changed.set()
            self._changed.clear()
        for endpoint in self._backends:
            self._telemetry.lb_backend_up.labels(*self._labels, endpoint).set(1 if endpoint in self._ring else 0)

    def _find_orphans(self) -> None:
        """Queue folders of backends not configured now (a restart with another list): reroute them."""
        assert self._base is not None
        if not self._base.is_dir():
            return
        known = {b.folder.name for b in self._backends.values()}
        for folder in sorted(self._base.iterdir()):
            if folder.name not in known and (folder / str(self.signal)).is_dir():
                self._orphans.append(folder)

    # --- the watcher: resolver, health, rerouting ----------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(_TICK):
            try:
                self._tick()
            except Exception:  # the watcher must go on; the data stays queued
                log.exception("%s: error while watching the backends", self.id)

    def _tick(self) -> None:
        now = time.monotonic()
        if self.config.resolver.dns is not None and now >= self._next_resolve:
            endpoints = self._resolve()
            if endpoints is not None:
                self._apply(endpoints)
        self._check_health(now)
        self._publish_ring()
        self._drain_all()

    def _apply(self, endpoints: list[str]) -> None:
        wanted = set(endpoints)
        for endpoint in sorted(wanted - {e for e, b in self._backends.items() if not b.removed}):
            log.info("%s: backend %s added", self.id, endpoint)
            self._add(endpoint)
        for endpoint, backend in list(self._backends.items()):
            if endpoint not in wanted and not backend.removed:
                log.warning("%s: backend %s removed from the resolver; its queue goes to the others", self.id, endpoint)
                backend.removed = True
                backend.to_drain = "removed"
                self._count_change("removed")

    def _check_health(self, now: float) -> None:
        failover = self.config.failover
        live = [b for b in self._backends.values() if not b.removed]
        for backend in live:
            sender = backend.sender
            if backend.healthy:
                failing = sender.failing_since if sender is not None else None
                others = any(o.healthy and o is not backend for o in live)
                if failing is not None and now - failing >= failover.unhealthy_after and others:
                    log.warning(
                        "%s: backend %s unreachable for %.0fs; its keys and queue go to the others",
                        self.id,
                        backend.endpoint,
                        now - failing,
                    )
                    backend.healthy = False
                    backend.good_probes = 0
                    backend.to_drain = "unhealthy"
                    self._count_change("unhealthy")
            elif now - backend.probed_at >= failover.probe_interval:
                backend.probed_at = now
                target = self.config.protocol.otlp.model_copy(update={"endpoint": backend.endpoint})
                probe = GrpcSender(target, self.signal)
                backend.good_probes = backend.good_probes + 1 if probe.backend_reachable(timeout=0.5) else 0
                if backend.good_probes >= failover.healthy_probes and not backend.to_drain:
                    log.info("%s: backend %s is back; it gets its keys again", self.id, backend.endpoint)
                    self._start_exporter(backend)
                    backend.healthy = True
                    self._count_change("healthy")

    def _drain_all(self) -> None:
        """Reroute the queues of backends out of the ring (and orphaned folders) while the ring has members."""
        if not len(self._ring):
            return
        for endpoint, backend in list(self._backends.items()):
            if not backend.to_drain or endpoint in self._ring:
                continue
            self._stop_exporter(backend)
            if self._drain(backend.folder, endpoint, backend.to_drain):
                backend.to_drain = ""
                if backend.removed:
                    del self._backends[endpoint]
                    self._telemetry.lb_backend_up.remove(*self._labels, endpoint)
        for folder in list(self._orphans):
            try:
                name = (folder / _ENDPOINT_FILE).read_text().strip() or folder.name
            except OSError:
                name = folder.name
            if self._drain(folder, name, "removed"):
                self._orphans.remove(folder)

    def _drain(self, folder: Path, backend: str, reason: str) -> bool:
        """Read ``folder``'s queue back and route every record through the ring; True once it is empty."""
        settings = self.config.protocol.otlp.sending_queue
        limits = self.config.protocol.otlp.batch
        queue = DiskQueue(
            folder / str(self.signal),
            max_items=settings.queue_size,
            max_bytes=settings.max_bytes,
            fsync=settings.fsync,
            name=f"{self.id}/{backend}/{self.signal} (rerouting)",
        )
        moved = 0
        try:
            while not self._stop.is_set():
                records = queue.get(limits.max_items, limits.max_bytes, timeout=0.0)
                if not records:
                    return True
                for record in records:
                    try:
                        self._route(Batch(self.signal, _raw=record.payload, _items=record.items))
                    except Refused as refused:
                        log.warning(
                            "%s: rerouting %s's queue paused (%s: %s); %d items moved so far",
                            self.id,
                            backend,
                            refused.reason,
                            refused,
                            moved,
                        )
                        return False
                    queue.ack([record])
                    moved += record.items
                    self._telemetry.lb_rerouted.labels(*self._labels, backend, reason).inc(record.items)
            return False
        finally:
            queue.close()
            if moved:
                log.warning("%s: rerouted %d %s queued for %s (%s)", self.id, moved, self.signal, backend, reason)

    def _count_change(self, event: str) -> None:
        self._telemetry.lb_backend_changes.labels(*self._labels, event).inc()

    # --- for tests ------------------------------------------------------------------------------

    @property
    def ring(self) -> HashRing:
        return self._ring

    def backends(self) -> dict[str, Any]:
        """``{endpoint: {"healthy", "removed", "queued"}}``."""
        return {
            e: {
                "healthy": b.healthy,
                "removed": b.removed,
                "queued": len(b.exporter.queue) if b.exporter is not None and b.exporter.queue is not None else None,
            }
            for e, b in self._backends.items()
        }


def _create(settings: CreateSettings, config: LoadBalancingConfig) -> LoadBalancingExporter:
    return LoadBalancingExporter(settings, config)


factory = make_factory(
    Kind.EXPORTER,
    "loadbalancing",
    signals=frozenset(Signal),
    config_model=LoadBalancingConfig,
    create=_create,
    # Cuts a batch into new requests and leaves the one it is handed as it was.
    capabilities=Capabilities(mutates_data=False),
)
