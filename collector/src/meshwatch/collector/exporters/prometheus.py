"""``prometheus`` exporter: metrics held as Prometheus series and served for scraping.

    exporters:
      prometheus:
        endpoint: 127.0.0.1:8889          # GET /metrics (any path answers)
        metric_expiration: 5m             # series not updated this long disappear
        resource_to_telemetry_conversion: {enabled: false}
        namespace: ""                     # prefix for every metric name
        const_labels: {}
        without_scope_info: false         # otel_scope_name / otel_scope_version labels
        max_exponential_buckets: 40
        cardinality_limit: 2000           # series per metric, its otel_metric_overflow="true" series included

The translation (names, ``_total``, units, ``target_info``, ``job``/``instance``,
delta → cumulative, exponential histograms) is ``_prom_store`` and ``_prom_names``.
The scrape endpoint is prometheus-client's own HTTP server with a custom collector,
so content negotiation is its: Prometheus' text format by default, OpenMetrics (with
exemplars on ``_bucket`` and ``_total`` samples) for an ``Accept:
application/openmetrics-text`` scrape, gzip when asked.

``consume`` runs on the receive path, so it only keeps the batch's bytes (already
encoded; no copy of the message the pipeline may still use) and returns; a
background thread (and every scrape, first) decodes and folds them into the series.
Points it cannot use are counted in ``meshwatch_exporter_dropped_items_total``
(``reason``: ``type_conflict``, ``out_of_order``, ``unspecified_temporality``,
``invalid_name``, ``malformed``, ``cardinality_limit``); folded ones in
``..._sent_items_total``.

A metric that has ``cardinality_limit`` series takes points of new label sets into its
one ``otel_metric_overflow="true"`` series (as the OpenTelemetry SDK does; see
``_prom_store``), counted in ``meshwatch_exporter_overflowed_points_total``, with one
warning per metric a minute at most. ``0`` switches the limit off.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..component import Capabilities, CreateSettings, Host, Kind, Refused, make_factory
from ..duration import parse_duration
from ..signals import Signal
from ._cardinality import DEFAULT_LIMIT, OverflowReport
from ._prom_store import SeriesStore
from ._telemetry_exporter import ExporterCounters

__all__ = ["PrometheusConfig", "PrometheusExporter", "factory"]

log = logging.getLogger("meshwatch.collector.exporter.prometheus")
#: Memory of one series in the store (measured: ~1 KB with six labels) and of one label
#: set remembered by its hash in an overflow series; for the memory limiter's estimate.
SERIES_BYTES, TRACKED_BYTES = 1024, 200


class ResourceToTelemetry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False


class PrometheusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str = "127.0.0.1:8889"
    namespace: str = ""
    const_labels: dict[str, str] = {}
    #: Seconds, or a duration such as ``5m``.
    metric_expiration: float = 300.0
    resource_to_telemetry_conversion: ResourceToTelemetry = Field(default_factory=ResourceToTelemetry)
    without_scope_info: bool = False
    max_exponential_buckets: int = Field(40, ge=2, le=320)
    #: Series per metric name, the ``otel_metric_overflow="true"`` series included; 0: no limit.
    cardinality_limit: int = Field(DEFAULT_LIMIT, ge=0)
    #: Bytes of received batches waiting to be folded before ``consume`` folds inline.
    max_pending_bytes: int = Field(64 * 1024 * 1024, ge=1024)

    _check_expiration = field_validator("metric_expiration", mode="before")(parse_duration)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"endpoint {value!r} must be host:port, e.g. 127.0.0.1:8889")
        return value


class _StoreCollector:
    """The prometheus-client ``Collector`` that renders the store at scrape time."""

    def __init__(self, exporter: PrometheusExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Any:
        self.exporter.drain()
        return self.exporter.store.families()


class PrometheusExporter:
    def __init__(self, settings: CreateSettings, config: PrometheusConfig) -> None:
        self.id = settings.id
        self.config = config
        self.overflow = OverflowReport(str(self.id), settings.telemetry, log)
        self.store = SeriesStore(
            namespace=config.namespace,
            expiration=config.metric_expiration,
            resource_to_telemetry=config.resource_to_telemetry_conversion.enabled,
            without_scope_info=config.without_scope_info,
            const_labels=config.const_labels,
            max_exponential_buckets=config.max_exponential_buckets,
            cardinality_limit=config.cardinality_limit,
            on_overflow=self.overflow,
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StoreCollector(self))
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._pending_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._counters = ExporterCounters(settings.telemetry, str(self.id), "metrics")
        self._accepting = False
        self._telemetry = settings.telemetry
        self.port = 0

    def held_bytes(self) -> int:
        """Batches waiting to be folded and the series held (an estimate), for the memory limiter."""
        series, tracked = self.store.footprint()
        return self._pending_bytes + series * SERIES_BYTES + tracked * TRACKED_BYTES

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, host: Host) -> None:
        self._telemetry.register_held(f"exporter {self.id}/metrics", self.held_bytes)
        address, _, port = self.config.endpoint.rpartition(":")
        address = address.strip("[]") or "127.0.0.1"
        try:
            self._server, _ = start_http_server(int(port), addr=address, registry=self.registry)
        except OSError as exc:
            where = self.config.endpoint
            raise RuntimeError(f"prometheus exporter {self.id}: cannot listen on {where}: {exc}") from exc
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._run, name=f"{self.id} fold", daemon=True)
        self._thread.start()
        self._accepting = True
        log.info("%s: serving metrics on http://%s:%d/metrics", self.id, address, self.port)

    def shutdown(self, timeout: float) -> None:
        self._accepting = False
        self._telemetry.unregister_held(f"exporter {self.id}/metrics")
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- the pipeline side -----------------------------------------------------------------

    def consume(self, batch: Any) -> None:
        if not self._accepting:
            raise Refused("shutting_down", f"exporter {self.id} is not running", retryable=True)
        raw = batch.raw
        with self._pending_lock:
            self._pending.append(raw)
            self._pending_bytes += len(raw)
            backlog = self._pending_bytes > self.config.max_pending_bytes
        if backlog:
            self.drain()  # the fold thread is behind: fold here rather than grow without bound
        else:
            self._wake.set()

    def drain(self) -> int:
        """Fold every pending batch into the store; returns the points folded."""
        folded = 0
        with self._drain_lock:
            while True:
                with self._pending_lock:
                    if not self._pending:
                        break
                    raw = self._pending.popleft()
                    self._pending_bytes -= len(raw)
                request = ExportMetricsServiceRequest()
                try:
                    request.ParseFromString(raw)
                except Exception:  # the receiver validated it; a corrupt record must not stop the exporter
                    self._counters.dropped("malformed", 1)
                    continue
                kept, dropped = self.store.fold(request)
                folded += kept
                self._counters.sent(kept)
                for reason, count in dropped.items():
                    self._counters.dropped(reason, count)
        return folded

    def _run(self) -> None:
        ticks = 0
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self.drain()
                ticks += 1
                if ticks % 10 == 0:
                    self.store.expire()
            except Exception:  # never let a bug stop the folding thread
                log.exception("%s: folding metrics failed", self.id)


factory = make_factory(
    Kind.EXPORTER,
    "prometheus",
    signals=frozenset({Signal.METRICS}),
    config_model=PrometheusConfig,
    create=PrometheusExporter,
    capabilities=Capabilities(mutates_data=False),
)
