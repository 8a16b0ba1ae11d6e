"""The HTTP receiver's timeouts: a slow client cannot hold a connection (or a worker) for ever.

A client that opens connections and sends its headers a byte at a time (slowloris), or
sends headers and then only part of the body, used to keep each connection open for as
long as it liked. Real collector process, raw sockets, times measured.
"""

from __future__ import annotations

import socket
import time

import pytest

pytestmark = pytest.mark.integration


def _config() -> dict:
    return {
        "receivers": {"otlp": {"protocols": {"http": {"read_header_timeout": "1s", "read_timeout": "1s"}}}},
        "exporters": {"debug": {}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["debug"]}}},
    }


def _connect(collector) -> socket.socket:
    host, port = collector.http_url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    started = time.monotonic()
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data, time.monotonic() - started


def test_headers_slower_than_read_header_timeout_close_the_connection(collector_factory) -> None:
    collector = collector_factory(_config())
    silent = _connect(collector)  # sends nothing at all
    slow = _connect(collector)
    slow.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")  # and never ends its headers
    _, silent_after = _read_until_closed(silent)
    _, slow_after = _read_until_closed(slow)
    assert silent_after < 4 and slow_after < 4, (silent_after, slow_after)
    refused = collector.metric("meshwatch_receiver_refused_items_total", reason="timeout", signal="unknown")
    assert refused == 2


def test_a_body_slower_than_read_timeout_is_answered_408(collector_factory) -> None:
    collector = collector_factory(_config())
    sock = _connect(collector)
    sock.sendall(
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: 1000\r\n\r\n" + b"\x0a" * 10
    )
    sock.settimeout(10)
    started = time.monotonic()
    answer = sock.recv(4096)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert took < 4, took
    assert collector.metric("meshwatch_receiver_refused_items_total", reason="timeout", signal="traces") == 1
