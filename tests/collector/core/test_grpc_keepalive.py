"""``protocols.grpc.keepalive``: a connection older than ``max_connection_age`` is closed by the collector.

Long-lived SDK connections otherwise stay on one collector for ever, so a load balancer
in front never spreads them again. Counted in the kernel's table of TCP connections
(``/proc/net/tcp``), not through gRPC, which would reconnect silently.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from ._helpers import random_trace_ids, span_request

pytestmark = pytest.mark.integration

_ESTABLISHED = "01"


def _established_to(port: int) -> int:
    """Client-side TCP connections to ``port`` in state ESTABLISHED (gRPC uses IPv4-mapped IPv6 sockets)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == _ESTABLISHED and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def _config(keepalive: dict | None) -> dict:
    grpc_protocol: dict = {}  # the testing helper picks a free port
    if keepalive:
        grpc_protocol["keepalive"] = keepalive
    return {
        "receivers": {"otlp": {"protocols": {"grpc": grpc_protocol}}},
        "exporters": {"debug": {}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["debug"]}}},
    }


@pytest.mark.parametrize(("age", "expected"), [(None, 1), ("1s", 0)], ids=["no-max-age", "max-age-1s"])
def test_max_connection_age_closes_old_connections(collector_factory, age: str | None, expected: int) -> None:
    keepalive = {"server_parameters": {"max_connection_age": age, "max_connection_age_grace": "500ms"}} if age else None
    collector = collector_factory(_config(keepalive))
    port = int(collector.grpc_endpoint.rsplit(":", 1)[1])
    channel = grpc.insecure_channel(collector.grpc_endpoint)
    try:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=None,
            response_deserializer=None,
        )
        export(span_request(random_trace_ids(1)), timeout=10)
        assert _established_to(port) == 1
        time.sleep(3)  # age 1 s + grace 0.5 s, with room
        assert _established_to(port) == expected
    finally:
        channel.close()
