"""The ``kafka`` receiver: a consumer-group member that hands OTLP records to the pipelines.

Wire-compatible with contrib's ``kafkareceiver`` (v0.165): a record's value is one
``Export*ServiceRequest`` (``otlp_proto`` or ``otlp_json``), read from the topics
``otlp_spans`` / ``otlp_metrics`` / ``otlp_logs`` by default, one consumer group
(``group_id``, default ``otel-collector``) sharing the partitions.

At-least-once, where users of the Go receiver lose data:

* A record's offset is marked for commit only after the pipeline accepted the batch
  holding it, which for meshwatch means durable in every exporter's queue. Killing the
  collector at any moment loses nothing; records read but not yet accepted are read again
  by whoever owns the partition next (duplicates, counted nowhere as loss).
* When the pipeline pushes back (a full queue, the memory limiter), the receiver keeps the
  batch in hand, **pauses** fetching on its partitions (librdkafka pause/resume; it stays
  in the group) and offers the same batch again with backoff, resuming when it is taken.
  Nothing is dropped and nothing is committed meanwhile.
* A record that no retry can fix (not OTLP, a signal without a pipeline) is counted in
  ``meshwatch_receiver_refused_items_total{transport="kafka"}``, logged with its topic,
  partition and offset, and passed over so it cannot stall its partition.

Records fetched together are decoded and handed on as one batch per signal (the
concatenation of serialized requests is a valid merged request), up to
``max_batch_bytes``. Self-metrics: rebalances (assigned, revoked, lost), paused, pauses,
committed records, and the lag of each assigned partition.

Config (names as contrib's where they exist)::

    receivers:
      kafka:
        brokers: [127.0.0.1:9092]
        group_id: otel-collector
        client_id: otel-collector
        traces:  {topics: [otlp_spans], encoding: otlp_proto}   # or otlp_json
        initial_offset: latest          # or earliest, with no committed offset
        session_timeout: 10s
        heartbeat_interval: 3s
        autocommit: {enable: true, interval: 1s}   # false: commit synchronously after each batch
        error_backoff: {initial_interval: 100ms, max_interval: 5s}
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from google.protobuf.message import DecodeError
from pydantic import Field, model_validator

from .._kafka import DEFAULT_TOPICS, ClientSettings, Encoding, client_config, unmarshal
from ..batch import Batch
from ..component import Capabilities, ComponentId, CreateSettings, Host, Kind, make_factory
from ..component import Consumer as PipelineConsumer
from ..duration import Duration
from ..model import StrictModel
from ..signals import Signal
from ..telemetry import Telemetry
from ._ingest import Ingest

__all__ = ["factory", "KafkaReceiverConfig", "KafkaReceiver"]

log = logging.getLogger("meshwatch.collector.receiver")

_TRANSPORT = "kafka"
#: How often the lag of the assigned partitions is measured (one ListOffsets round trip each).
_LAG_EVERY = 2.0


class TopicEncoding(StrictModel):
    #: Default per signal: otlp_spans, otlp_metrics, otlp_logs.
    topics: list[str] | None = Field(None, min_length=1)
    encoding: Encoding = "otlp_proto"


class AutoCommit(StrictModel):
    #: Commit marked offsets every ``interval`` (True) or synchronously after each batch (False).
    enable: bool = True
    interval: Duration = Field(1.0, gt=0)


class MessageMarking(StrictModel):
    """Accepted for contrib compatibility; only the at-least-once values are allowed."""

    after: bool = True
    on_error: bool = False
    on_permanent_error: bool = True

    @model_validator(mode="after")
    def _at_least_once(self) -> MessageMarking:
        if not self.after:
            raise ValueError(
                "after: false would commit records before the pipeline has them, so a crash loses them; "
                "meshwatch marks a record only once it is durable in the exporters' queues (drop the key)"
            )
        if self.on_error:
            raise ValueError(
                "on_error: true would commit records the pipeline pushed back; meshwatch pauses "
                "consumption and retries them instead (drop the key)"
            )
        if not self.on_permanent_error:
            raise ValueError(
                "on_permanent_error: false would stall the partition forever on a record no retry can fix; "
                "meshwatch counts such a record as refused and moves on (drop the key)"
            )
        return self


class ErrorBackoff(StrictModel):
    """Backoff while the pipeline pushes back (never gives up: the records stay in Kafka)."""

    enabled: bool = True
    initial_interval: Duration = Field(0.1, gt=0)
    max_interval: Duration = Field(5.0, gt=0)
    multiplier: float = Field(1.5, ge=1)
    randomization_factor: float = Field(0.5, ge=0, le=1)
    max_elapsed_time: Duration = Field(0.0, ge=0)  # accepted; no effect


_Strategy = Literal["range", "roundrobin", "cooperative-sticky"]


class KafkaReceiverConfig(ClientSettings):
    traces: TopicEncoding = Field(default_factory=TopicEncoding)
    metrics: TopicEncoding = Field(default_factory=TopicEncoding)
    logs: TopicEncoding = Field(default_factory=TopicEncoding)
    group_id: str = "otel-collector"
    group_instance_id: str | None = None
    initial_offset: Literal["latest", "earliest"] = "latest"
    session_timeout: Duration = Field(10.0, gt=0)
    heartbeat_interval: Duration = Field(3.0, gt=0)
    group_rebalance_strategy: _Strategy | None = None
    group_rebalance_strategies: list[_Strategy] | None = Field(None, min_length=1)
    min_fetch_size: int = Field(1, ge=1)
    max_fetch_size: int = Field(1_048_576, ge=1024)
    max_fetch_wait: Duration = Field(0.25, gt=0)
    max_partition_fetch_size: int = Field(1_048_576, ge=1024)
    autocommit: AutoCommit = Field(default_factory=AutoCommit)
    message_marking: MessageMarking = Field(default_factory=MessageMarking)
    error_backoff: ErrorBackoff = Field(default_factory=ErrorBackoff)
    #: meshwatch: records fetched per poll, and the most bytes of them handed on as one batch.
    max_poll_records: int = Field(500, ge=1, le=100_000)
    max_batch_bytes: int = Field(8 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _checks(self) -> KafkaReceiverConfig:
        if self.group_rebalance_strategy and self.group_rebalance_strategies:
            raise ValueError("group_rebalance_strategy and group_rebalance_strategies: set one (the second)")
        if self.heartbeat_interval >= self.session_timeout:
            raise ValueError("heartbeat_interval must be shorter than session_timeout")
        return self

    def topic_encoding(self, signal: Signal) -> tuple[list[str], Encoding]:
        section = {Signal.TRACES: self.traces, Signal.METRICS: self.metrics, Signal.LOGS: self.logs}[signal]
        return section.topics or [DEFAULT_TOPICS[signal]], section.encoding


def consumer_config(config: KafkaReceiverConfig) -> dict[str, Any]:
    """librdkafka consumer properties: offsets are stored by hand, after the pipeline took a batch."""
    strategies = config.group_rebalance_strategies or [config.group_rebalance_strategy or "cooperative-sticky"]
    properties = client_config(config)
    properties.update(
        {
            "group.id": config.group_id,
            "auto.offset.reset": config.initial_offset,
            "enable.auto.offset.store": False,  # the point of this receiver: see the module docstring
            "enable.auto.commit": config.autocommit.enable,
            "auto.commit.interval.ms": int(config.autocommit.interval * 1000),
            "session.timeout.ms": int(config.session_timeout * 1000),
            "heartbeat.interval.ms": int(config.heartbeat_interval * 1000),
            "partition.assignment.strategy": ",".join(strategies),
            "fetch.min.bytes": config.min_fetch_size,
            "fetch.max.bytes": config.max_fetch_size,
            "fetch.wait.max.ms": int(config.max_fetch_wait * 1000),
            "max.partition.fetch.bytes": config.max_partition_fetch_size,
            "allow.auto.create.topics": True,
            "enable.partition.eof": False,
            "queued.max.messages.kbytes": 32_768,  # what librdkafka prefetches, per partition
        }
    )
    if config.group_instance_id:
        properties["group.instance.id"] = config.group_instance_id
    return properties


def _where(message: Message) -> str:
    return f"{message.topic()}[{message.partition()}]@{message.offset()}"


class KafkaReceiver:
    def __init__(
        self, settings: CreateSettings, config: KafkaReceiverConfig, consumers: dict[Signal, PipelineConsumer]
    ) -> None:
        self.id: ComponentId = settings.id
        self.config = config
        self.consumers = consumers
        self.topics: dict[str, tuple[Signal, Encoding]] = {}
        for signal in consumers:
            names, encoding = config.topic_encoding(signal)
            for name in names:
                if name in self.topics:
                    raise ValueError(f"receiver {self.id}: topic {name} is configured for two signals")
                self.topics[name] = (signal, encoding)
        self._consumer: Consumer | None = None
        self._host: Host | None = None
        self._ingest: Ingest | None = None
        self._telemetry: Telemetry = settings.telemetry
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Records read but not yet accepted, in the order read; owned by the consumer thread.
        self._pending: list[Message] = []
        self._paused = False
        #: The next offset to mark per (topic, partition): one past the last accepted record.
        self._next: dict[tuple[str, int], int] = {}
        self._lag: dict[tuple[str, int], int] = {}
        self._lag_at = 0.0

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, host: Host) -> None:
        self._host = host
        self._ingest = Ingest(str(self.id), self.consumers, self._telemetry)
        self._consumer = Consumer(consumer_config(self.config), logger=logging.getLogger("meshwatch.kafka"))
        self._consumer.subscribe(
            list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._telemetry.kafka_paused.labels(str(self.id)).set(0)
        self._telemetry.register_kafka_lag(str(self.id), lambda: dict(self._lag))
        self._telemetry.register_held(f"receiver {self.id}", self.held_bytes)
        self._thread = threading.Thread(target=self._run, name=f"kafka receiver {self.id}", daemon=True)
        self._thread.start()
        log.info(
            "%s: consuming %s from %s as group %s",
            self.id,
            ", ".join(sorted(self.topics)),
            ",".join(self.config.brokers),
            self.config.group_id,
        )

    def shutdown(self, timeout: float) -> None:
        """Stop reading; the batch in hand is either accepted and marked or left for the next owner."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(1.0, timeout))
        self._telemetry.unregister_kafka_lag(str(self.id))
        self._telemetry.unregister_held(f"receiver {self.id}")

    def held_bytes(self) -> int:
        """Bytes of the records in hand (read, not yet accepted), for the memory limiter and a gauge.

        Paused partitions stop fetching, so under push-back this stays at one poll's worth.
        """
        return sum(len(m.value() or b"") for m in list(self._pending))

    # --- the consumer thread ---------------------------------------------------------------

    def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        backoff = self.config.error_backoff
        delay = backoff.initial_interval
        try:
            while not self._stop.is_set():
                self._measure_lag()
                if not self._pending:
                    self._pending = self._usable(consumer.consume(self.config.max_poll_records, timeout=0.25))
                    if not self._pending:
                        continue
                retry_after = self._deliver()
                if not self._pending:
                    delay = backoff.initial_interval
                    if self._paused:
                        self._set_paused(False)
                    continue
                if not self._paused:
                    self._set_paused(True)
                wait = max(retry_after, delay) if backoff.enabled else retry_after
                wait = min(wait, backoff.max_interval) * (1 + backoff.randomization_factor * (random.random() - 0.5))  # noqa: S311 - jitter
                delay = min(delay * backoff.multiplier, backoff.max_interval)
                self._serve_group_while_paused(wait)
        except Exception as exc:  # a bug here must not end consumption silently: stop the collector
            log.exception("%s: the consumer loop failed; records not accepted are read again after a restart", self.id)
            if self._host is not None:
                self._host.report_fatal(self.id, exc)
        finally:
            try:
                consumer.close()  # leaves the group; with autocommit, commits what was marked
            except KafkaException as exc:
                log.warning("%s: closing the consumer: %s", self.id, exc)

    def _serve_group_while_paused(self, seconds: float) -> None:
        """Wait, still polling so rebalances are served; records of paused partitions do not come."""
        assert self._consumer is not None
        end = time.monotonic() + seconds
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            assignment = self._consumer.assignment()
            if assignment:
                self._consumer.pause(assignment)  # again: partitions assigned meanwhile pause too
            self._pending += self._usable(self._consumer.consume(self.config.max_poll_records, timeout=min(0.25, left)))
            self._measure_lag()

    def _set_paused(self, paused: bool) -> None:
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        if paused:
            if assignment:
                self._consumer.pause(assignment)
            self._telemetry.kafka_pauses.labels(str(self.id)).inc()
            log.warning("%s: the pipeline pushes back; consumption paused, the batch in hand is kept", self.id)
        else:
            if assignment:
                self._consumer.resume(assignment)
            log.info("%s: the pipeline takes data again; consumption resumed", self.id)
        self._paused = paused
        self._telemetry.kafka_paused.labels(str(self.id)).set(1 if paused else 0)

    def _usable(self, messages: list[Message]) -> list[Message]:
        usable = []
        for message in messages:
            error = message.error()
            if error is None:
                usable.append(message)
            elif error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                log.debug("%s: %s", self.id, error.str())
            else:
                log.warning("%s: consumer: %s", self.id, error.str())
        return usable

    # --- handing records to the pipelines ---------------------------------------------------

    def _deliver(self) -> float:
        """Offer the records in hand, in chunks of ``max_batch_bytes``; keep what was pushed back.

        Returns the pipeline's ``retry_after`` when something was pushed back (0 otherwise).
        """
        pending = self._pending
        index = 0
        while index < len(pending):
            chunk, size = [], 0
            while index < len(pending):
                length = len(pending[index].value() or b"")
                if chunk and size + length > self.config.max_batch_bytes:
                    break
                chunk.append(pending[index])
                size += length
                index += 1
            pushed_back, retry_after = self._deliver_chunk(chunk)
            if pushed_back:
                self._pending = pushed_back + pending[index:]
                return retry_after
        self._pending = []
        return 0.0

    def _deliver_chunk(self, chunk: list[Message]) -> tuple[list[Message], float]:
        assert self._ingest is not None
        by_signal: dict[Signal, list[Message]] = {}
        for message in chunk:
            by_signal.setdefault(self.topics[message.topic()][0], []).append(message)
        pushed_back: list[Message] = []
        retry_after = 0.0
        for signal, messages in by_signal.items():
            batch = self._decode(signal, messages)
            if batch is not None:
                outcome = self._ingest.batch(_TRANSPORT, batch)
                if not outcome.ok and outcome.retryable:
                    pushed_back += messages
                    retry_after = max(retry_after, outcome.retry_after)
                    continue
                if not outcome.ok:
                    log.error(
                        "%s: the pipeline refused %d %s for good (%s: %s); records %s..%s passed over",
                        self.id,
                        outcome.items,
                        signal,
                        outcome.reason,
                        outcome.message,
                        _where(messages[0]),
                        _where(messages[-1]),
                    )
            self._mark(messages)
        return pushed_back, retry_after

    def _decode(self, signal: Signal, messages: list[Message]) -> Batch | None:
        """One batch of the records' requests; a record that is not one is refused on its own."""
        assert self._ingest is not None
        encoding = self.topics[messages[0].topic()][1]
        values = [m.value() or b"" for m in messages]
        if encoding == "otlp_proto":
            try:
                return Batch.from_bytes(signal, b"".join(values), receiver=str(self.id), transport=_TRANSPORT)
            except (DecodeError, ValueError, RuntimeError):
                pass  # one of them is not OTLP: find which, record by record
        good: list[Any] = []
        for message, value in zip(messages, values, strict=True):
            try:
                if not value:
                    raise ValueError("an empty record value")
                good.append(unmarshal(signal, value, encoding))
            except (DecodeError, ValueError, RuntimeError) as exc:
                log.warning("%s: record %s is not an OTLP %s request: %s", self.id, _where(message), encoding, exc)
                self._ingest.refuse(_TRANSPORT, signal, "malformed", str(exc))
        if not good:
            return None
        merged = good[0]
        for request in good[1:]:
            merged.MergeFrom(request)
        return Batch.from_message(signal, merged, receiver=str(self.id), transport=_TRANSPORT)

    def _mark(self, messages: list[Message]) -> None:
        """Mark the records accepted: their offsets are committed (now, or at the next auto-commit)."""
        assert self._consumer is not None
        last: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            last[key] = max(last.get(key, -1), message.offset())
        offsets = [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]
        try:
            self._consumer.store_offsets(offsets=offsets)
            if not self.config.autocommit.enable:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The partition moved to another member meanwhile: it reads these records again.
            log.info("%s: could not mark %s: %s", self.id, offsets, exc.args[0].str())
            return
        for key, offset in last.items():
            self._next[key] = offset + 1
        counts: dict[str, int] = {}
        for message in messages:
            counts[message.topic()] = counts.get(message.topic(), 0) + 1
        for topic, count in counts.items():
            self._telemetry.kafka_committed.labels(str(self.id), topic).inc(count)

    # --- rebalances and lag ---------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        self._telemetry.kafka_rebalances.labels(str(self.id), "assigned").inc()
        log.info("%s: partitions assigned: %s", self.id, _names(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._give_up(partitions, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._give_up(partitions, "lost")

    def _give_up(self, partitions: list[TopicPartition], event: str) -> None:
        """Forget the records in hand of partitions that are no longer ours: their next owner reads them."""
        if not partitions:
            return
        assert self._consumer is not None
        self._telemetry.kafka_rebalances.labels(str(self.id), event).inc()
        gone = {(p.topic, p.partition) for p in partitions}
        before = len(self._pending)
        self._pending = [m for m in self._pending if (m.topic(), m.partition()) not in gone]
        for key in gone:
            self._next.pop(key, None)
            self._lag.pop(key, None)
        if event == "revoked" and self.config.autocommit.enable:
            # Hand over what is marked now, so the next owner does not read it again (raises
            # when nothing was marked since the last commit).
            with contextlib.suppress(KafkaException):
                self._consumer.commit(asynchronous=False)
        level = logging.WARNING if event == "lost" else logging.INFO
        log.log(
            level,
            "%s: partitions %s: %s (%d records in hand left to their next owner)",
            self.id,
            event,
            _names(partitions),
            before - len(self._pending),
        )

    def _measure_lag(self) -> None:
        """Lag per assigned partition: high watermark minus the next offset to accept."""
        now = time.monotonic()
        if now - self._lag_at < _LAG_EVERY:
            return
        self._lag_at = now
        assert self._consumer is not None
        lags: dict[tuple[str, int], int] = {}
        try:
            for tp in self._consumer.assignment():
                key = (tp.topic, tp.partition)
                _low, high = self._consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
                next_offset = self._next.get(key)
                if next_offset is None:
                    committed = self._consumer.committed([tp], timeout=1.0)[0].offset
                    if committed < 0:
                        continue
                    next_offset = committed
                lags[key] = max(0, high - next_offset)
        except KafkaException as exc:
            log.debug("%s: lag not measured: %s", self.id, exc)
            return
        self._lag = lags


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions)


factory = make_factory(
    Kind.RECEIVER,
    "kafka",
    signals=frozenset(Signal),
    config_model=KafkaReceiverConfig,
    create=KafkaReceiver,
    capabilities=Capabilities(mutates_data=False),
)
