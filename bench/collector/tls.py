"""What TLS costs on the OTLP receivers: the same requests to a plaintext and a TLS collector.

Two collectors (the same config but for ``tls`` on both protocols; an exporter to a
closed port, so every request is only made durable in the queue, ``fsync: never``)
get, one after the other: --requests gRPC calls on one channel, --requests HTTP
requests on one kept-alive connection, and --connections HTTP requests each on a new
connection (a full handshake each, and the certificate files' change check), and
--connections gRPC calls each on a new channel. Prints
requests/s side by side. Certificates are made on the spot (tests/collector/core/_certs.py).

    .venv/bin/python bench/collector/tls.py [--requests 2000] [--connections 300] [--spans 100]
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "collector" / "core"))
from _certs import make_pki  # noqa: E402

from meshwatch.collector.testing import free_port, start_collector  # noqa: E402

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _request(spans: int) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(spans):
        span = scope.spans.add(trace_id=b"\x01" * 16, span_id=(i + 1).to_bytes(8, "big"), name=f"GET /items/{i}")
        span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_001_500_000
    return request.SerializeToString()


def _config(tls: dict | None) -> dict:
    protocols = {"grpc": {"tls": tls} if tls else {}, "http": {"tls": tls} if tls else {}}
    return {
        "receivers": {"otlp": {"protocols": protocols}},
        "exporters": {
            "otlp/void": {
                "endpoint": f"127.0.0.1:{free_port()}",
                "tls": {"insecure": True},
                "sending_queue": {"fsync": "never"},
            }
        },
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/void"]}}},
    }


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.0f} req/s"


def _grpc(endpoint: str, ca: Path | None, body: bytes, n: int, *, new_channel: bool = False) -> float:
    def connect() -> grpc.Channel:
        if ca:
            return grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(ca.read_bytes()))
        return grpc.insecure_channel(endpoint)

    channel = connect()
    channel.unary_unary(TRACES)(body, timeout=10)  # connect (and handshake) outside the timing
    start = time.perf_counter()
    for _ in range(n):
        if new_channel:
            channel.close()
            channel = connect()
        channel.unary_unary(TRACES)(body, timeout=10)
    elapsed = time.perf_counter() - start
    channel.close()
    return elapsed


def _http(url: str, context: ssl.SSLContext | None, body: bytes, n: int, *, new_connection: bool) -> float:
    host, port = url.split("://")[1].split(":")
    headers = {"Content-Type": "application/x-protobuf"}

    def connect() -> http.client.HTTPConnection:
        if context is None:
            return http.client.HTTPConnection(host, int(port), timeout=10)
        return http.client.HTTPSConnection(host, int(port), timeout=10, context=context)

    conn = connect()
    start = time.perf_counter()
    for _ in range(n):
        if new_connection:
            conn.close()
            conn = connect()
        conn.request("POST", "/v1/traces", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--spans", type=int, default=100)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="meshwatch-tls-bench-"))
    pki = make_pki(tmp / "pki")
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    body = _request(args.spans)
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    rows = []
    for name, server_tls in (("plaintext", None), ("TLS", tls)):
        collector = start_collector(_config(server_tls), tmp / name)
        try:
            ca = pki.ca_file if server_tls else None
            ctx = context if server_tls else None
            rows.append(
                (
                    name,
                    _grpc(collector.grpc_endpoint, ca, body, args.requests),
                    _http(collector.http_url, ctx, body, args.requests, new_connection=False),
                    _http(collector.http_url, ctx, body, args.connections, new_connection=True),
                    _grpc(collector.grpc_endpoint, ca, body, args.connections, new_channel=True),
                )
            )
        finally:
            collector.stop()
    print(f"{args.spans} spans per request ({len(body)} bytes); one client thread; 2 cores")
    print(
        f"{'receiver':<10} {'gRPC, one channel':>18} {'HTTP, keep-alive':>18} {'HTTP, new connection':>22}"
        f" {'gRPC, new channel':>19}"
    )
    for name, g, h, c, gc in rows:
        print(
            f"{name:<10} {_rate(args.requests, g):>18} {_rate(args.requests, h):>18} {_rate(args.connections, c):>22}"
            f" {_rate(args.connections, gc):>19}"
        )


if __name__ == "__main__":
    main()
