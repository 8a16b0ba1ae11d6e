"""Is a Kafka broker serving? One real Metadata request, in the standard library only.

The stack has no dependencies, and "the port accepts connections" is not readiness for
Kafka: a KRaft node listens before its broker is registered and unfenced. A Metadata
response that lists a broker is what a client needs before it can produce or consume.

Metadata v4 (request header v1) is used: the oldest version Kafka 4 still serves
(KIP-896 removed v0-v3) and the newest before the flexible (tagged-field) encoding.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

__all__ = ["KafkaMetadata", "kafka_metadata"]

_METADATA = 3
_VERSION = 4
_CLIENT_ID = b"meshwatch-stack"


@dataclass(frozen=True)
class KafkaMetadata:
    brokers: tuple[tuple[int, str, int], ...]  # (node id, host, port)
    cluster_id: str | None
    controller_id: int


def _request(correlation_id: int) -> bytes:
    header = struct.pack(">hhih", _METADATA, _VERSION, correlation_id, len(_CLIENT_ID)) + _CLIENT_ID
    body = struct.pack(">i?", 0, False)  # no topics (brokers only), no auto-creation
    message = header + body
    return struct.pack(">i", len(message)) + message


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection mid-response")
        data += chunk
    return data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        length = self.take(">h")
        if length < 0:
            return None
        text = self.data[self.pos : self.pos + length].decode()
        self.pos += length
        return text


def kafka_metadata(host: str, port: int, timeout: float = 2.0) -> KafkaMetadata:
    """Send one Metadata request; raise ``OSError`` / ``ValueError`` when the answer is not one."""
    correlation_id = 0x6D77  # any value; checked on the way back
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_request(correlation_id))
        (size,) = struct.unpack(">i", _read_exact(sock, 4))
        if not 8 <= size <= 1 << 20:
            raise ValueError(f"not a Kafka response (size {size})")
        reader = _Reader(_read_exact(sock, size))
    if reader.take(">i") != correlation_id:
        raise ValueError("the response does not answer our request")
    reader.take(">i")  # throttle_time_ms
    brokers = []
    for _ in range(reader.take(">i")):
        node_id = reader.take(">i")
        broker_host = reader.string() or ""
        broker_port = reader.take(">i")
        reader.string()  # rack
        brokers.append((node_id, broker_host, broker_port))
    cluster_id = reader.string()
    controller_id = reader.take(">i")
    return KafkaMetadata(tuple(brokers), cluster_id, controller_id)
