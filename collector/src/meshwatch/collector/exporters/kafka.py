"""The ``kafka`` exporter: OTLP requests as Kafka records, behind the durable queue.

Wire-compatible with contrib's ``kafkaexporter`` (v0.165): one ``Export*ServiceRequest``
per record, ``otlp_proto`` (default) or ``otlp_json``, topics ``otlp_spans`` /
``otlp_metrics`` / ``otlp_logs``. With ``partition_traces_by_id`` a traces batch becomes
one record per trace, keyed by the hex trace id and placed on the partition the Go
collector's default (Sarama-compatible FNV-1a) partitioner picks, so a consumer group
of either collector sees each trace on one member.

What differs on purpose, where users of the Go exporter lose data:

* A request larger than ``producer.max_message_bytes`` is cut in halves (by span, metric
  or log record, each keeping its resource and scope) until every part fits, and sent as
  several records. A single item too large on its own, or a record the broker refuses as
  too large or invalid, is written to the dead-letter file and counted as
  ``dropped{reason="rejected"}``; the rest of the batch is delivered, so one bad record
  never clogs the queue.
* A send is acknowledged (removed from the queue) only when every record of it has a
  delivery report; records the broker did not take are retried alone, never dropped.

Config (names as contrib's where they exist)::

    exporters:
      kafka:
        brokers: [127.0.0.1:9092]
        client_id: otel-collector
        traces:  {topic: otlp_spans, encoding: otlp_proto}     # or otlp_json
        metrics: {topic: otlp_metrics}
        logs:    {topic: otlp_logs}
        partition_traces_by_id: true
        producer:
          max_message_bytes: 1000000       # before compression
          compression: zstd                # none, gzip, snappy, lz4, zstd
          compression_params: {level: 3}
          required_acks: 1                 # 0, 1 or -1 (all in-sync replicas)
          linger: 10ms
        timeout: 10s                       # for every record of a send to be acknowledged
        tls: {ca_file: ca.pem}             # optional; auth: {sasl: {mechanism, username, password}}
        sending_queue: {...}               # see ExporterSettings
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException, Producer
from pydantic import Field

from .._kafka import DEFAULT_TOPICS, ClientSettings, Encoding, client_config, fit, marshal, sarama_partition
from .._kafka.encoding import pack_serialized, split_by_trace
from ..batch import Batch
from ..component import Capabilities, CreateSettings, Host, Kind, make_factory
from ..duration import Duration
from ..model import StrictModel
from ..queued_exporter import QueuedExporter, queued_exporter
from ..sender import ExporterSettings, SendResult, TransientError, tcp_reachable
from ..signals import Signal, count_items

__all__ = ["factory", "KafkaExporterConfig", "KafkaSender"]

log = logging.getLogger("meshwatch.collector.exporter")

#: The broker (or librdkafka, before sending) refuses the record for its size: cut it further.
_TOO_LARGE = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE}
#: The broker refuses the record itself; no retry will change that.
_INVALID = {KafkaError.INVALID_RECORD}
#: Rounds of cutting records the broker found too large (each halves the largest record).
_MAX_ROUNDS = 24


class SignalTopic(StrictModel):
    #: Default per signal: otlp_spans, otlp_metrics, otlp_logs.
    topic: str | None = None
    encoding: Encoding = "otlp_proto"


class CompressionParams(StrictModel):
    level: int = -1  # the codec's default


class ProducerSettings(StrictModel):
    #: The largest record value sent, before compression; larger requests are cut.
    max_message_bytes: int = Field(1_000_000, ge=1024, le=900_000_000)
    max_broker_write_bytes: int | None = None  # accepted: a franz-go setting
    required_acks: Literal[0, 1, -1] = 1
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    compression_params: CompressionParams = Field(default_factory=CompressionParams)
    flush_max_messages: int = Field(10_000, ge=1, le=1_000_000)
    #: Produce requests in flight per broker connection (contrib's default 1; more is faster, and
    #: retried records may then reorder, which OTLP data does not mind).
    max_inflight_requests_per_broker: int = Field(5, ge=1, le=1_000)
    allow_auto_topic_creation: bool = True
    linger: Duration = Field(0.01, ge=0, le=10)


class KafkaExporterConfig(ExporterSettings, ClientSettings):
    traces: SignalTopic = Field(default_factory=SignalTopic)
    metrics: SignalTopic = Field(default_factory=SignalTopic)
    logs: SignalTopic = Field(default_factory=SignalTopic)
    producer: ProducerSettings = Field(default_factory=ProducerSettings)
    #: One record per trace, keyed by the hex trace id (traces pipelines only).
    partition_traces_by_id: bool = False

    def signal_topic(self, signal: Signal) -> tuple[str, Encoding]:
        section = {Signal.TRACES: self.traces, Signal.METRICS: self.metrics, Signal.LOGS: self.logs}[signal]
        return section.topic or DEFAULT_TOPICS[signal], section.encoding


def producer_config(config: KafkaExporterConfig) -> dict[str, Any]:
    """librdkafka producer properties for ``config``."""
    producer = config.producer
    properties = client_config(config)
    properties.update(
        {
            "acks": "all" if producer.required_acks == -1 else producer.required_acks,
            "compression.type": producer.compression,
            "linger.ms": producer.linger * 1000,
            "batch.num.messages": producer.flush_max_messages,
            "max.in.flight.requests.per.connection": producer.max_inflight_requests_per_broker,
            "allow.auto.create.topics": producer.allow_auto_topic_creation,
            # Room for the record overhead above the value limit this exporter enforces itself.
            "message.max.bytes": producer.max_message_bytes + 65_536,
            "message.timeout.ms": int(config.timeout * 1000),
            # What librdkafka may hold unsent; the durable queue in front holds the rest.
            "queue.buffering.max.kbytes": 65_536,
        }
    )
    if producer.compression != "none" and producer.compression_params.level != -1:
        properties["compression.level"] = producer.compression_params.level
    return properties


@dataclass
class _Record:
    request: Any  # the Export*ServiceRequest, or None when ``raw`` was sent as it came
    raw: bytes  # its protobuf bytes: what is retried and dead-lettered
    value: bytes
    key: bytes | None
    items: int


class _Deliveries:
    """Delivery reports of one send, filled in by librdkafka's callbacks in whichever thread polls."""

    def __init__(self, count: int) -> None:
        self.errors: list[KafkaError | None] = [None] * count
        self.done = [False] * count
        self.left = count
        self._lock = threading.Lock()

    def report(self, index: int, error: KafkaError | None) -> None:
        with self._lock:
            if not self.done[index]:
                self.done[index] = True
                self.errors[index] = error
                self.left -= 1


class KafkaSender:
    """Produces one batch as records and waits for every delivery report (thread-safe)."""

    thread_safe = True

    def __init__(self, config: KafkaExporterConfig, signal: Signal) -> None:
        self.config = config
        self.signal = signal
        self.topic, self.encoding = config.signal_topic(signal)
        self.by_trace = config.partition_traces_by_id and signal is Signal.TRACES
        self._producer: Producer | None = None
        self._partitions: tuple[int, float] | None = None  # (count, when read)
        self._partitions_lock = threading.Lock()

    def start(self, host: Host) -> None:
        self._producer = Producer(producer_config(self.config), logger=logging.getLogger("meshwatch.kafka"))

    def shutdown(self) -> None:
        if self._producer is not None:
            self._producer.flush(5.0)

    def backend_reachable(self, timeout: float) -> bool:
        for broker in self.config.brokers:
            host, _, port = broker.rpartition(":")
            if port.isdigit() and tcp_reachable(host.strip("[]") or "127.0.0.1", int(port), timeout):
                return True
        return False

    # --- one batch -------------------------------------------------------------------------

    def send(self, batch: Batch) -> SendResult:
        records, oversized = self._records(batch)
        delivered = 0
        retry: list[_Record] = []
        rejected: list[tuple[_Record, str]] = [(r, "message_too_large") for r in oversized]
        last_error: KafkaError | None = None
        pending = records
        for _ in range(_MAX_ROUNDS):
            if not pending:
                break
            cut: list[_Record] = []
            for record, error in zip(pending, self._produce(pending), strict=True):
                if error is None:
                    delivered += record.items
                elif error.code() in _TOO_LARGE:
                    smaller, alone = self._fit(self._request(record), max(1, len(record.value) // 2), record.key)
                    cut += smaller
                    rejected += [(r, "message_too_large") for r in alone]
                elif error.code() in _INVALID:
                    rejected.append((record, error.name().lower()))
                else:
                    retry.append(record)
                    last_error = error
            pending = cut
        retry += pending  # still too large after every round: try again later rather than drop
        if retry and not delivered and not rejected:
            assert last_error is not None or pending
            name = last_error.name() if last_error is not None else "MSG_SIZE_TOO_LARGE"
            message = last_error.str() if last_error is not None else "records still too large"
            raise TransientError(name.lower(), f"kafka {self.topic}: {message}")
        return self._result(retry, rejected)

    def _result(self, retry: list[_Record], rejected: list[tuple[_Record, str]]) -> SendResult:
        result = SendResult()
        if retry:
            result.retry = Batch(self.signal, _raw=b"".join(r.raw for r in retry), _items=sum(r.items for r in retry))
        if rejected:
            result.rejected = sum(r.items for r, _ in rejected)
            result.rejected_reason = rejected[0][1]
            limit = self.config.producer.max_message_bytes
            result.dead_letters = [
                {
                    "error": f"{reason}: a record of {len(r.value)} bytes (limit {limit}) "
                    f"holding {r.items} item(s) cannot be sent to topic {self.topic}",
                    "items": r.items,
                    "topic": self.topic,
                    "key": r.key.decode() if r.key else None,
                    "request_protobuf_base64": base64.b64encode(r.raw).decode(),
                }
                for r, reason in rejected
            ]
        return result

    def _records(self, batch: Batch) -> tuple[list[_Record], list[_Record]]:
        """The records of ``batch`` (fitting ``max_message_bytes``) and the items too large alone."""
        limit = self.config.producer.max_message_bytes
        if not self.by_trace:
            if self.encoding == "otlp_proto":
                return self._records_serialized(batch, limit)
            return self._fit(batch.message, limit, None)
        records: list[_Record] = []
        oversized: list[_Record] = []
        for trace_id, request in split_by_trace(batch.message):
            fitting, alone = self._fit(request, limit, trace_id.hex().encode())
            records += fitting
            oversized += alone
        return records, oversized

    def _records_serialized(self, batch: Batch, limit: int) -> tuple[list[_Record], list[_Record]]:
        """otlp_proto without keys: the queued bytes as they are, cut at resource boundaries if needed.

        Only a single resource entry over ``limit`` is decoded (and cut by item).
        """
        raw = batch.raw
        if len(raw) <= limit:  # the very bytes that were queued: nothing decoded or re-encoded
            return [_Record(None, raw, raw, None, batch.items)], []
        packed, large = pack_serialized(raw, limit)
        records = [
            _Record(None, part, part, None, count_items(self.signal, _decoded(self.signal, part))) for part in packed
        ]
        oversized: list[_Record] = []
        for entry in large:
            fitting, alone = self._fit(_decoded(self.signal, entry), limit, None)
            records += fitting
            oversized += alone
        return records, oversized

    def _fit(self, request: Any, limit: int, key: bytes | None) -> tuple[list[_Record], list[_Record]]:
        def encode(part: Any) -> bytes:
            return marshal(part, self.encoding)

        fitting, alone = fit(self.signal, request, limit, encode)
        return [self._record(part, value, key) for part, value in fitting], [
            self._record(part, value, key) for part, value in alone
        ]

    def _record(self, request: Any, value: bytes, key: bytes | None) -> _Record:
        raw = value if self.encoding == "otlp_proto" else request.SerializeToString()
        return _Record(request, raw, value, key, count_items(self.signal, request))

    def _request(self, record: _Record) -> Any:
        if record.request is not None:
            return record.request
        return Batch.from_bytes(self.signal, record.raw).message

    # --- librdkafka ------------------------------------------------------------------------

    def _partition_count(self) -> int:
        """Partitions of the topic (for keyed records), re-read every ``metadata.refresh_interval``."""
        assert self._producer is not None
        with self._partitions_lock:
            cached = self._partitions
            if cached is not None and time.monotonic() - cached[1] < self.config.metadata.refresh_interval:
                return cached[0]
        # A topic made on first use (auto-creation) has no partitions in the first answer: ask a
        # few times before calling it a transient failure.
        for attempt in range(5):
            try:
                metadata = self._producer.list_topics(self.topic, timeout=min(5.0, self.config.timeout))
            except KafkaException as exc:
                error = exc.args[0]
                raise TransientError(error.name().lower(), f"kafka {self.topic}: metadata: {error.str()}") from None
            topic = metadata.topics.get(self.topic)
            if topic is not None and topic.error is None and topic.partitions:
                break
            time.sleep(0.2 * (attempt + 1))
        else:
            why = topic.error.str() if topic is not None and topic.error is not None else "no partitions yet"
            raise TransientError("unknown_topic", f"kafka topic {self.topic}: {why}")
        with self._partitions_lock:
            self._partitions = (len(topic.partitions), time.monotonic())
        return len(topic.partitions)

    def _produce(self, records: list[_Record]) -> list[KafkaError | None]:
        """Produce ``records`` and wait for their delivery reports; one error (or None) per record."""
        assert self._producer is not None
        producer = self._producer
        deliveries = _Deliveries(len(records))
        partitions = self._partition_count() if any(r.key for r in records) else 0
        deadline = time.monotonic() + self.config.timeout + 1.0
        for index, record in enumerate(records):

            def on_delivery(error: KafkaError | None, _message: Any, index: int = index) -> None:
                deliveries.report(index, error)

            options: dict[str, Any] = {"value": record.value, "on_delivery": on_delivery}
            if record.key:
                options["key"] = record.key
                options["partition"] = sarama_partition(record.key, partitions)
            while True:
                try:
                    producer.produce(self.topic, **options)
                    break
                except BufferError:  # librdkafka's own buffer is full: let it send, then go on
                    producer.poll(0.05)
                    if time.monotonic() > deadline:
                        deliveries.report(index, KafkaError(KafkaError._QUEUE_FULL))
                        break
                except KafkaException as exc:
                    deliveries.report(index, exc.args[0])
                    break
        while deliveries.left and time.monotonic() < deadline:
            producer.poll(0.05)
        if deliveries.left:
            self._forget_partitions()
            return [
                error if done else KafkaError(KafkaError._MSG_TIMED_OUT)
                for error, done in zip(deliveries.errors, deliveries.done, strict=True)
            ]
        if any(e is not None and e.code() == KafkaError._UNKNOWN_PARTITION for e in deliveries.errors):
            self._forget_partitions()
        return deliveries.errors

    def _forget_partitions(self) -> None:
        with self._partitions_lock:
            self._partitions = None


def _decoded(signal: Signal, raw: bytes) -> Any:
    return Batch.from_bytes(signal, raw).message


def _create(settings: CreateSettings, config: KafkaExporterConfig) -> QueuedExporter:
    assert settings.signal is not None
    return queued_exporter(settings, config, KafkaSender(config, settings.signal))


factory = make_factory(
    Kind.EXPORTER,
    "kafka",
    signals=frozenset(Signal),
    config_model=KafkaExporterConfig,
    create=_create,
    capabilities=Capabilities(mutates_data=False),
)
