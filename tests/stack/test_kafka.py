"""Kafka in the stack: the readiness probe, the KRaft node the fixture starts, a real produce and consume."""

from __future__ import annotations

import base64
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer

from meshwatch.stack import Server, StackError, wait_http
from meshwatch.stack._kafka_probe import kafka_metadata
from meshwatch.stack.backends import kafka_cluster_id


def test_cluster_ids_are_kafka_uuids() -> None:
    ids = {kafka_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    for cluster_id in ids:
        assert len(cluster_id) == 22 and "=" not in cluster_id
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


@pytest.fixture
def not_kafka() -> Iterator[int]:
    """A loopback port that accepts connections and answers like a web server, not like Kafka."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


def test_a_port_that_accepts_connections_is_not_a_ready_kafka(not_kafka: int) -> None:
    # tcp:// readiness would pass here; the Metadata probe must not.
    wait_http(f"tcp://127.0.0.1:{not_kafka}", timeout=2)
    with pytest.raises(StackError, match="not ready"):
        wait_http(f"kafka://127.0.0.1:{not_kafka}", timeout=1.5)
    with pytest.raises((ValueError, ConnectionError)):
        kafka_metadata("127.0.0.1", not_kafka)


def test_the_kafka_fixture_is_a_kraft_broker_on_loopback_with_a_small_heap(kafka: Server) -> None:
    host, _, port = kafka.urls["bootstrap"].rpartition(":")
    assert host == "127.0.0.1"
    metadata = kafka_metadata(host, int(port))
    assert metadata.brokers == ((1, "127.0.0.1", int(port)),)
    assert metadata.controller_id == 1 and metadata.cluster_id
    assert any(arg == "-Xmx256m" for arg in kafka.argv[-1].split()), kafka.argv
    assert kafka.ports["controller"] != int(port)


def test_a_record_produced_is_consumed_by_a_group(kafka: Server) -> None:
    topic = f"stack-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka.urls["bootstrap"]})
    delivered: list[object] = []
    producer.produce(topic, value=b"hello", key=b"k", on_delivery=lambda err, msg: delivered.append(err or msg))
    assert producer.flush(30) == 0
    assert delivered and not isinstance(delivered[0], Exception), delivered
    consumer = Consumer(
        {"bootstrap.servers": kafka.urls["bootstrap"], "group.id": topic, "auto.offset.reset": "earliest"}
    )
    try:
        consumer.subscribe([topic])
        got = None
        for _ in range(60):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                got = message
                break
        assert got is not None and got.value() == b"hello" and got.key() == b"k"
    finally:
        consumer.close()
