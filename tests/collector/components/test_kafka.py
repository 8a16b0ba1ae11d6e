"""The kafka exporter and receiver through real meshwatch-collector processes and the real Kafka.

Counting is done at ``otlp_sink``, which keeps every span it is sent (duplicates too), so a
loss or a duplicate shows; Kafka itself is read back where a record's key, partition or size
is what the test is about.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from typing import Any

import grpc
import pytest
from confluent_kafka import Consumer, Producer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

from meshwatch.collector._kafka import sarama_partition
from meshwatch.collector.otlp_sink import otlp_sink
from meshwatch.collector.testing import free_port
from meshwatch.stack import Server
from meshwatch.stack.testing import eventually

from ._otlp import span, traces

pytestmark = pytest.mark.integration

PARTITIONS = 4  # what the stack's Kafka gives a topic made on first use
POLL = 20  # the back-pressure tests' max_poll_records


def _topic() -> str:
    return f"mw-{uuid.uuid4().hex[:10]}"


def exporter_collector(kafka: Server, topic: str, **exporter: Any) -> dict[str, Any]:
    return {
        "exporters": {"kafka": {"brokers": [kafka.urls["bootstrap"]], "traces": {"topic": topic}, **exporter}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["kafka"]}}},
    }


def receiver_collector(kafka: Server, topic: str, sink_url: str, **exporter: Any) -> dict[str, Any]:
    return {
        "receivers": {
            "kafka": {
                "brokers": [kafka.urls["bootstrap"]],
                "group_id": f"group-{topic}",
                "traces": {"topics": [topic]},
                "initial_offset": "earliest",
                "session_timeout": "6s",
                "heartbeat_interval": "1s",
                "autocommit": {"interval": "200ms"},
            }
        },
        "exporters": {
            "otlphttp": {
                "endpoint": sink_url,
                "retry_on_failure": {"initial_interval": "100ms", "max_interval": "500ms"},
                **exporter,
            }
        },
        "service": {"pipelines": {"traces": {"receivers": ["kafka"], "exporters": ["otlphttp"]}}},
    }


def send(endpoint: str, request: ExportTraceServiceRequest) -> None:
    with grpc.insecure_channel(endpoint) as channel:
        TraceServiceStub(channel).Export(request, timeout=30)


def span_ids(request: ExportTraceServiceRequest) -> set[tuple[str, str]]:
    return {
        (s.trace_id.hex(), s.span_id.hex()) for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans
    }


def read_topic(kafka: Server, topic: str, expected: int, *, spans: bool = False) -> list[Any]:
    """Every record of ``topic``, waiting until ``expected`` records (or, with ``spans``, records
    carrying that many spans) are there."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.urls["bootstrap"],
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    records: list[Any] = []
    try:
        consumer.subscribe([topic])

        def all_read() -> bool:
            records.extend(m for m in consumer.consume(500, timeout=0.5) if m.error() is None)
            if spans:
                return sum(len(span_ids(ExportTraceServiceRequest.FromString(m.value()))) for m in records) >= expected
            return len(records) >= expected

        eventually(all_read, timeout=60, interval=0, what=f"{expected} records in {topic}")
    finally:
        consumer.close()
    return records


def produce_spans(kafka: Server, topic: str, records: int, spans_per_record: int) -> tuple[set[tuple[str, str]], int]:
    """Put OTLP records on ``topic`` as an upstream exporter would; returns the span ids sent and
    the size of the largest record."""
    producer = Producer({"bootstrap.servers": kafka.urls["bootstrap"], "linger.ms": 5})
    sent: set[tuple[str, str]] = set()
    largest = 0
    for index in range(records):
        request = traces(
            {"service.name": "producer"}, [span(f"r{index}-{j}") for j in range(spans_per_record)], scope="kafka"
        )
        sent |= span_ids(request)
        value = request.SerializeToString()
        largest = max(largest, len(value))
        producer.produce(topic, value=value)
        producer.poll(0)
    assert producer.flush(30) == 0
    return sent, largest


def test_spans_go_through_kafka_keyed_by_trace_one_record_per_trace(collector_factory, kafka: Server) -> None:
    topic = _topic()
    with otlp_sink() as sink:
        consumer = collector_factory(receiver_collector(kafka, topic, sink.url), name="consumer")
        producer = collector_factory(exporter_collector(kafka, topic, partition_traces_by_id=True), name="producer")
        trace_ids = [os.urandom(16) for _ in range(40)]
        request = traces(
            {"service.name": "checkout", "host.name": "h1"},
            [span(f"op-{i}", trace_id=trace_ids[i % 40], attributes={"i": i, "user": f"u{i}"}) for i in range(400)],
        )
        send(producer.grpc_endpoint, request)
        expected = span_ids(request)
        eventually(lambda: sink.span_ids() >= expected, timeout=60, what="every span at the sink")
        assert len(sink.spans) == 400  # nothing lost, nothing twice
        seen = {s.span_id: s for s in sink.spans}
        for original in request.resource_spans[0].scope_spans[0].spans:
            got = seen[original.span_id.hex()]
            assert got.name == original.name and got.trace_id == original.trace_id.hex()
            assert got.attributes == {"i": int(original.name[3:]), "user": f"u{original.name[3:]}"}
            assert got.resource == {"service.name": "checkout", "host.name": "h1"}
        assert consumer.metric("meshwatch_kafka_receiver_committed_records_total") == 40
        assert consumer.metric("meshwatch_kafka_receiver_rebalances_total", event="assigned") >= 1

    # On the wire: one record per trace, keyed by its hex trace id, on the Go partitioner's partition.
    records = read_topic(kafka, topic, 40)
    assert len(records) == 40
    for record in records:
        carried = ExportTraceServiceRequest.FromString(record.value())
        ids = {s.trace_id.hex() for rs in carried.resource_spans for ss in rs.scope_spans for s in ss.spans}
        assert ids == {record.key().decode()}
        assert record.partition() == sarama_partition(record.key(), PARTITIONS)
    assert {r.partition() for r in records} == set(range(PARTITIONS))


def test_a_batch_over_max_message_bytes_is_split_and_a_lone_giant_dead_lettered(
    collector_factory, kafka: Server
) -> None:
    topic = _topic()
    limit = 20_000
    with otlp_sink() as sink:
        collector_factory(receiver_collector(kafka, topic, sink.url), name="consumer")
        producer = collector_factory(
            exporter_collector(kafka, topic, producer={"max_message_bytes": limit}), name="producer"
        )
        small = [span(f"s{i}", attributes={"pad": "x" * 400}) for i in range(200)]
        giant = span("giant", attributes={"blob": "y" * 60_000})
        request = traces({"service.name": "big"}, [*small[:100], giant, *small[100:]])
        assert request.ByteSize() > 4 * limit
        send(producer.grpc_endpoint, request)
        expected = span_ids(request) - {(giant.trace_id.hex(), giant.span_id.hex())}
        eventually(lambda: sink.span_ids() >= expected, timeout=60, what="the 200 spans that fit")
        eventually(
            lambda: producer.metric("meshwatch_queue_size_items", exporter="kafka") == 0, what="the queue drained"
        )
        assert producer.metric("meshwatch_exporter_dropped_items_total", exporter="kafka", reason="rejected") == 1
        assert producer.metric("meshwatch_exporter_sent_items_total", exporter="kafka") == 200
        assert len(sink.spans) == 200 and "giant" not in sink.span_names()
        letters = [
            json.loads(line) for line in (producer.storage_dir / "deadletter" / "kafka.jsonl").read_text().splitlines()
        ]
        assert [(d["reason"], d["items"]) for d in letters] == [("message_too_large", 1)]
        kept = ExportTraceServiceRequest()
        kept.ParseFromString(base64.b64decode(letters[0]["request_protobuf_base64"]))
        assert [s.name for s in kept.resource_spans[0].scope_spans[0].spans] == ["giant"]
    records = read_topic(kafka, topic, 200, spans=True)
    assert len(records) >= 5 and all(len(r.value()) <= limit for r in records)


def _backpressured(kafka: Server, topic: str, port: int) -> dict[str, Any]:
    """A consumer whose exporter's small queue fills while its backend (``port``) is down."""
    config = receiver_collector(
        kafka,
        topic,
        f"http://127.0.0.1:{port}",
        sending_queue={"queue_size": 500},
    )
    config["receivers"]["kafka"]["max_poll_records"] = POLL
    return config


def test_when_the_pipeline_pushes_back_consumption_pauses_and_resumes(collector_factory, kafka: Server) -> None:
    topic = _topic()
    sent, record_bytes = produce_spans(kafka, topic, records=60, spans_per_record=50)
    port = free_port()
    consumer = collector_factory(_backpressured(kafka, topic, port), name="consumer")
    assert consumer.metric("meshwatch_kafka_receiver_paused") == 0  # positive control: not paused yet
    eventually(lambda: consumer.metric("meshwatch_kafka_receiver_paused") == 1, timeout=60, what="paused")
    assert consumer.metric("meshwatch_kafka_receiver_pauses_total") >= 1
    eventually(lambda: consumer.metric("meshwatch_kafka_receiver_lag_records") > 0, timeout=30, what="lag while paused")
    committed = consumer.metric("meshwatch_kafka_receiver_committed_records_total")
    assert 0 < committed < 60  # only what the queue took is marked
    assert consumer.metric("meshwatch_exporter_dropped_items_total") == 0
    # Paused partitions are not fetched: the receiver holds one poll's worth, not the whole backlog.
    time.sleep(3)
    held = consumer.metric("meshwatch_collector_held_bytes", component="receiver kafka")
    assert 0 < held <= POLL * record_bytes, (held, record_bytes)
    with otlp_sink(port) as sink:
        eventually(lambda: sink.span_ids() >= sent, timeout=120, what="every span once the backend is back")
        eventually(lambda: consumer.metric("meshwatch_kafka_receiver_paused") == 0, timeout=30, what="resumed")
        eventually(lambda: consumer.metric("meshwatch_kafka_receiver_lag_records") == 0, timeout=30, what="no lag")
        assert sink.duplicate_spans() == 0


def test_sigkill_of_a_consuming_collector_loses_nothing(collector_factory, kafka: Server, capsys) -> None:
    topic = _topic()
    sent, _ = produce_spans(kafka, topic, records=60, spans_per_record=50)
    port = free_port()
    consumer = collector_factory(_backpressured(kafka, topic, port), name="consumer")
    # Killed while it holds a batch the pipeline pushed back, some records already marked.
    eventually(lambda: consumer.metric("meshwatch_kafka_receiver_paused") == 1, timeout=60, what="paused")
    assert consumer.metric("meshwatch_kafka_receiver_committed_records_total") > 0
    consumer.kill()
    with otlp_sink(port) as sink:
        consumer.restart()  # same storage: its queue resumes; the group hands it the partitions again
        eventually(lambda: sink.span_ids() >= sent, timeout=120, what="every span after the SIGKILL")
        duplicates = sink.duplicate_spans()
        assert len(sink.span_ids()) == len(sent) == 3000
        assert consumer.metric("meshwatch_kafka_receiver_rebalances_total", event="assigned") >= 1
    with capsys.disabled():
        print(f"\nkafka SIGKILL: sent {len(sent)} spans, arrived {len(sent)} distinct, {duplicates} duplicates")


def test_a_second_member_takes_partitions_over_and_both_count_the_rebalance(collector_factory, kafka: Server) -> None:
    topic = _topic()
    first_half, _ = produce_spans(kafka, topic, records=40, spans_per_record=25)
    with otlp_sink() as sink:
        one = collector_factory(receiver_collector(kafka, topic, sink.url), name="one")
        eventually(lambda: sink.span_ids() >= first_half, timeout=60, what="the first member drains the topic")
        assert one.metric("meshwatch_kafka_receiver_rebalances_total", event="revoked") == 0  # positive control
        two = collector_factory(receiver_collector(kafka, topic, sink.url), name="two")
        eventually(
            lambda: one.metric("meshwatch_kafka_receiver_rebalances_total", event="revoked") >= 1,
            timeout=60,
            what="the first member gives partitions up",
        )
        eventually(
            lambda: two.metric("meshwatch_kafka_receiver_rebalances_total", event="assigned") >= 1,
            timeout=60,
            what="the second member gets partitions",
        )
        second_half, _ = produce_spans(kafka, topic, records=40, spans_per_record=25)
        eventually(lambda: sink.span_ids() >= first_half | second_half, timeout=60, what="every span")
        took = [c.metric("meshwatch_kafka_receiver_committed_records_total") for c in (one, two)]
        assert took[1] > 0 and sum(took) >= 80, took  # both members consumed; each record at least once
