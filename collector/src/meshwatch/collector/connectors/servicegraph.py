"""``servicegraph`` connector: client → server edges from spans, named as the
OpenTelemetry Collector's ``servicegraph`` connector (which Grafana's node graph reads).

A CLIENT (or PRODUCER) span and the SERVER (or CONSUMER) span whose parent it is
form one request on the edge ``client → server``: they are matched by trace id +
client span id within ``store.ttl``. Per edge and flush, cumulative:

* ``traces_service_graph_request_total`` and ``traces_service_graph_request_failed_total``
  (either side's status ERROR), labels ``client``, ``server``, ``connection_type``
  (``""``; ``messaging_system`` for PRODUCER/CONSUMER pairs; ``database`` for client
  spans carrying a ``database_name_attributes`` attribute, recorded at once with the
  database as server; ``virtual_node`` for edges completed on expiry), plus
  ``client_<dim>`` / ``server_<dim>`` for configured ``dimensions``;
* ``traces_service_graph_request_client`` / ``..._server`` histograms (unit ``s``),
  in Prometheus ``traces_service_graph_request_{client,server}_seconds_*``.

Uninstrumented peers become virtual nodes when the pending half expires: a client
span's server is named by its first ``virtual_node_peer_attributes`` attribute
(``peer.service``, ``server.address``, …); a root server span's client is ``user``.
Halves that expire otherwise are counted in
``meshwatch_connector_servicegraph_expired_edges_total``; spans refused because the
store holds ``store.max_items`` pending edges in
``meshwatch_connector_servicegraph_dropped_spans_total``. The metrics carry no
resource (as the Collector's): ``job``/``instance`` are the scrape target's.

    connectors:
      servicegraph:
        store: {ttl: 2s, max_items: 10000}
        latency_histogram_buckets: [10ms, 50ms, 100ms, 500ms, 1s, 5s]
        dimensions: [http.request.method]
        metrics_flush_interval: 15s
"""

from __future__ import annotations

import re
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..component import Capabilities, Component, Consumer, CreateSettings, Host, Kind, make_factory
from ..duration import parse_duration
from ..otlp_values import any_to_string
from ..signals import Signal
from ..telemetry import Telemetry
from ._common import (
    DEFAULT_BUCKETS,
    Flusher,
    add_histogram_point,
    duration_list,
    emit,
    flush_failures,
    histogram_metric,
    string_attributes,
    sum_metric,
)

__all__ = ["ServiceGraphConfig", "ServiceGraphConnector", "factory"]

CLIENT, SERVER = Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_SERVER
PRODUCER, CONSUMER = Span.SPAN_KIND_PRODUCER, Span.SPAN_KIND_CONSUMER
ERROR = Status.STATUS_CODE_ERROR


class StoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl: float = Field(2.0, gt=0)
    max_items: int = Field(10_000, ge=1)

    _durations = field_validator("ttl", mode="before")(parse_duration)


class ServiceGraphConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: StoreConfig = Field(default_factory=StoreConfig)
    latency_histogram_buckets: list[float] = Field(default_factory=lambda: list(DEFAULT_BUCKETS), min_length=1)
    dimensions: list[str] = []
    virtual_node_peer_attributes: list[str] = ["peer.service", "server.address", "net.peer.name", "db.system"]
    database_name_attributes: list[str] = ["db.namespace", "db.name"]
    metrics_flush_interval: float = Field(15.0, gt=0)
    #: How often pending edges are checked for expiry.
    store_expiration_loop: float = Field(1.0, gt=0)

    _durations = field_validator("metrics_flush_interval", "store_expiration_loop", mode="before")(parse_duration)
    _buckets = field_validator("latency_histogram_buckets", mode="before")(duration_list)


def _any_of(keys: list[str]) -> Any:
    """A fast "does this serialized span mention any of ``keys``" test (None when there are none)."""
    if not keys:
        return None
    return re.compile(b"|".join(re.escape(k.encode()) for k in keys)).search


class _Edge:
    __slots__ = (
        "client",
        "client_dims",
        "client_latency",
        "client_span",
        "connection_type",
        "expires",
        "failed",
        "server",
        "server_dims",
        "server_is_root",
        "server_latency",
    )

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.client = ""
        self.server = ""
        self.client_latency = 0.0
        self.server_latency = 0.0
        self.failed = False
        self.connection_type = ""
        #: The serialized client span, parsed only if the edge expires unmatched (virtual
        #: node peer attributes): walking every client span's attributes in Python costs
        #: several times more than serializing it, and bytes keep no request alive.
        self.client_span: bytes = b""
        self.client_dims: tuple[str, ...] = ()
        self.server_dims: tuple[str, ...] = ()
        self.server_is_root = False


class ServiceGraphConnector:
    def __init__(self, settings: CreateSettings, config: ServiceGraphConfig, next_consumer: Consumer) -> None:
        self.id = settings.id
        self.config = config
        self.next = next_consumer
        self.bounds = tuple(config.latency_histogram_buckets)
        self._pending: OrderedDict[bytes, _Edge] = OrderedDict()
        #: (client, server, connection_type, *client dims, *server dims) -> [total, failed, client h, server h, start]
        self._series: dict[tuple[str, ...], list[Any]] = {}
        self._lock = threading.Lock()
        self._peer_attrs = config.virtual_node_peer_attributes
        self._db_attrs = config.database_name_attributes
        self._db_set = frozenset(config.database_name_attributes)
        # bytes.find-style prefilters over a serialized span (one C call instead of a Python walk)
        self._db_keys = _any_of(config.database_name_attributes)
        self._peer_keys = _any_of(config.virtual_node_peer_attributes)
        self._dims = config.dimensions
        self._flusher = Flusher(
            f"{self.id} flush",
            [(config.store_expiration_loop, self.expire), (config.metrics_flush_interval, self.flush)],
        )
        self._bind(settings.telemetry)
        #: Counts for tests and the docs: edges completed, expired, spans dropped.
        self.completed = 0

    def _bind(self, telemetry: Telemetry) -> None:
        self._expired = telemetry.counter(
            "meshwatch_connector_servicegraph_expired_edges",
            "Half edges (a client or server span) whose other half did not arrive within store.ttl",
            ("connector",),
        ).labels(str(self.id))
        self._dropped = telemetry.counter(
            "meshwatch_connector_servicegraph_dropped_spans",
            "Spans not paired because the store was full (store.max_items)",
            ("connector",),
        ).labels(str(self.id))
        self._failed = flush_failures(telemetry, str(self.id))

    def start(self, host: Host) -> None:
        self._flusher.start()

    def shutdown(self, timeout: float) -> None:
        self._flusher.stop(timeout)
        self.expire()
        self.flush()

    # --- pairing (receive path) --------------------------------------------------------------

    def consume(self, batch: Any) -> None:
        now = time.monotonic()
        expires = now + self.config.store.ttl
        pending = self._pending
        with self._lock:
            for rs in batch.message.resource_spans:
                service = ""
                for kv in rs.resource.attributes:
                    if kv.key == "service.name":
                        service = any_to_string(kv.value)
                        break
                if not service:
                    continue
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        kind = span.kind
                        raw = b""
                        if kind in (CLIENT, PRODUCER):
                            # One serialization, then bytes.find, instead of walking attributes.
                            raw = span.SerializeToString()
                            if self._db_keys and self._db_keys(raw) and self._database_edge(service, span):
                                continue
                            key = span.trace_id + span.span_id
                            client_side = True
                        elif kind in (SERVER, CONSUMER):
                            key = b"" if not span.parent_span_id else span.trace_id + span.parent_span_id
                            client_side = False
                        else:
                            continue
                        edge = pending.get(key) if key else None
                        if edge is None:
                            if len(pending) >= self.config.store.max_items:
                                self._dropped.inc()
                                continue
                            edge = _Edge(expires)
                            if key:
                                pending[key] = edge
                            else:  # a root server span: its client can only be the virtual "user"
                                key = span.trace_id + span.span_id + b"root"
                                pending[key] = edge
                        self._fill(edge, service, span, client_side)
                        if client_side and self._peer_keys:
                            edge.client_span = raw
                        if edge.client and edge.server:
                            del pending[key]
                            edge.client_span = b""
                            self._record(edge)

    def _fill(self, edge: _Edge, service: str, span: Any, client_side: bool) -> None:
        end, start = span.end_time_unix_nano, span.start_time_unix_nano
        latency = (end - start) / 1e9 if end > start else 0.0
        if span.status.code == ERROR:
            edge.failed = True
        kind = span.kind
        if kind in (PRODUCER, CONSUMER):
            edge.connection_type = "messaging_system"
        dims: tuple[str, ...] = ()
        if self._dims:
            found = {kv.key: kv.value for kv in span.attributes}
            dims = tuple(any_to_string(found[d]) if d in found else "" for d in self._dims)
        if client_side:
            edge.client, edge.client_latency, edge.client_dims = service, latency, dims
        else:
            edge.server, edge.server_latency, edge.server_dims = service, latency, dims
            edge.server_is_root = not span.parent_span_id

    def _peer(self, raw: bytes) -> str:
        if not raw or not self._peer_keys or not self._peer_keys(raw):
            return ""
        span = Span()
        span.ParseFromString(raw)
        found = {kv.key: kv.value for kv in span.attributes}
        for name in self._peer_attrs:
            if name in found:
                return any_to_string(found[name])
        return ""

    def _database_edge(self, service: str, span: Any) -> bool:
        for kv in span.attributes:
            if kv.key in self._db_set:
                edge = _Edge(0.0)
                self._fill(edge, service, span, True)
                edge.server = any_to_string(kv.value)
                edge.server_latency = edge.client_latency
                edge.server_dims = edge.client_dims
                edge.connection_type = "database"
                self._record(edge)
                return True
        return False

    def _record(self, edge: _Edge) -> None:
        """Add one completed request to its edge's series (lock held)."""
        self.completed += 1
        n = len(self._dims)
        key = (
            edge.client,
            edge.server,
            edge.connection_type,
            *(edge.client_dims or ("",) * n),
            *(edge.server_dims or ("",) * n),
        )
        series = self._series.get(key)
        if series is None:
            size = len(self.bounds) + 1
            series = self._series[key] = [0, 0, [0] * size, 0.0, [0] * size, 0.0, time.time_ns()]
        series[0] += 1
        if edge.failed:
            series[1] += 1
        series[2][bisect_left(self.bounds, edge.client_latency)] += 1
        series[3] += edge.client_latency
        series[4][bisect_left(self.bounds, edge.server_latency)] += 1
        series[5] += edge.server_latency

    def expire(self, now: float | None = None) -> int:
        """Settle pending halves older than ``store.ttl``; returns how many expired unmatched."""
        now = time.monotonic() if now is None else now
        unmatched = 0
        with self._lock:
            pending = self._pending
            while pending:
                key, edge = next(iter(pending.items()))
                if edge.expires > now:
                    break
                del pending[key]
                peer = self._peer(edge.client_span) if edge.client and not edge.server else ""
                edge.client_span = b""
                if peer:
                    edge.server = peer
                    edge.server_latency = edge.client_latency
                    edge.connection_type = "virtual_node"
                    self._record(edge)
                elif edge.server and not edge.client and edge.server_is_root:
                    edge.client = "user"
                    edge.client_latency = edge.server_latency
                    edge.connection_type = "virtual_node"
                    self._record(edge)
                else:
                    unmatched += 1
        if unmatched:
            self._expired.inc(unmatched)
        return unmatched

    # --- flushing ----------------------------------------------------------------------------

    def build(self, now_ns: int | None = None) -> ExportMetricsServiceRequest:
        now_ns = now_ns or time.time_ns()
        request = ExportMetricsServiceRequest()
        with self._lock:
            if not self._series:
                return request
            sm = request.resource_metrics.add().scope_metrics.add()
            sm.scope.name = "servicegraphconnector"
            total = sm.metrics.add()
            total.CopyFrom(sum_metric("traces_service_graph_request_total", "Requests between two nodes"))
            failed = sm.metrics.add()
            failed.CopyFrom(
                sum_metric("traces_service_graph_request_failed_total", "Failed requests between two nodes")
            )
            client = sm.metrics.add()
            client.CopyFrom(histogram_metric("traces_service_graph_request_client", "Client-side request time", "s"))
            server = sm.metrics.add()
            server.CopyFrom(histogram_metric("traces_service_graph_request_server", "Server-side request time", "s"))
            n = len(self._dims)
            for key, series in self._series.items():
                pairs = [("client", key[0]), ("server", key[1]), ("connection_type", key[2])]
                pairs += [(f"client_{d}", v) for d, v in zip(self._dims, key[3 : 3 + n], strict=True) if v]
                pairs += [(f"server_{d}", v) for d, v in zip(self._dims, key[3 + n :], strict=True) if v]
                attributes = string_attributes(pairs)
                start = series[6]
                for metric, value in ((total, series[0]), (failed, series[1])):
                    point = metric.sum.data_points.add(start_time_unix_nano=start, time_unix_nano=now_ns)
                    point.as_int = value
                    point.attributes.extend(attributes)
                for metric, counts, seconds in ((client, series[2], series[3]), (server, series[4], series[5])):
                    add_histogram_point(
                        metric, attributes, start=start, now=now_ns, bounds=self.bounds, counts=counts, total=seconds
                    )
        return request

    def flush(self) -> None:
        emit(str(self.id), self.next, self.build(), self._failed)


def _create(settings: CreateSettings, config: ServiceGraphConfig, next: Mapping[Signal, Consumer]) -> Component:
    """Consumes traces; emits to the metrics pipelines that name it as a receiver."""
    return ServiceGraphConnector(settings, config, next[Signal.METRICS])


factory = make_factory(
    Kind.CONNECTOR,
    "servicegraph",
    signals=frozenset({Signal.TRACES}),
    output_signals=frozenset({Signal.METRICS}),
    config_model=ServiceGraphConfig,
    create=_create,
    capabilities=Capabilities(mutates_data=False),
)
