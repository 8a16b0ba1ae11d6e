"""What TLS costs on the OTLP receivers: the same requests to a plaintext and a TLS collector.

Two collectors (the same config but for ``tls`` on both protocols; an exporter to a
closed port, so every request is only made durable in the queue, ``fsync: never``)
get, one after the other: --requests gRPC calls on one channel, --requests HTTP
requests on one kept-alive connection, and --connections HTTP requests each on a new
connection (a full handshake each, and the certificate files' change check), and
--connections gRPC calls each on a new channel. Both collectors run for the whole
benchmark; --rounds rounds (default 3) alternate which one goes first. Prints the
median requests/s (and the spread) side by side and writes every round to --output
(default ``bench/results/collector-tls.json``) with the git commit. Certificates are
made on the spot (tests/collector/core/_certs.py).

    .venv/bin/python bench/collector/tls.py [--requests 2000] [--connections 300] [--spans 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "collector" / "core"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _certs import make_pki  # noqa: E402
from queue_fsync_latency import _commit as commit  # noqa: E402

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
                # room for every round: nothing leaves (the exporter points at a closed port)
                "sending_queue": {"fsync": "never", "queue_size": 20_000_000, "max_bytes": 4 << 30},
            }
        },
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/void"]}}},
    }


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


COLUMNS = ("gRPC, one channel", "HTTP, keep-alive", "HTTP, new connection", "gRPC, new channel")


def _round(collector, ca, ctx, body: bytes, *, requests: int, connections: int) -> dict[str, float]:
    """Requests/s of each column against one collector."""
    return {
        COLUMNS[0]: requests / _grpc(collector.grpc_endpoint, ca, body, requests),
        COLUMNS[1]: requests / _http(collector.http_url, ctx, body, requests, new_connection=False),
        COLUMNS[2]: connections / _http(collector.http_url, ctx, body, connections, new_connection=True),
        COLUMNS[3]: connections / _grpc(collector.grpc_endpoint, ca, body, connections, new_channel=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--spans", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "collector-tls.json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="meshwatch-tls-bench-"))
    pki = make_pki(tmp / "pki")
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    body = _request(args.spans)
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    sides = {"plaintext": (None, None, None), "TLS": (tls, pki.ca_file, context)}
    collectors = {name: start_collector(_config(server_tls), tmp / name) for name, (server_tls, _, _) in sides.items()}
    rounds: list[dict[str, object]] = []
    try:
        for number in range(args.rounds):
            order = list(sides) if number % 2 == 0 else list(reversed(sides))
            for name in order:
                _, ca, ctx = sides[name]
                rates = _round(collectors[name], ca, ctx, body, requests=args.requests, connections=args.connections)
                rounds.append({"round": number, "receiver": name, **rates})
                print(f"  round {number + 1}/{args.rounds} {name}: " + ", ".join(f"{r:,.0f}" for r in rates.values()))
    finally:
        for collector in collectors.values():
            collector.stop()
    print(f"{args.spans} spans per request ({len(body)} bytes); one client thread; median req/s (min–max)")
    print(f"{'receiver':<10}" + "".join(f" {c:>24}" for c in COLUMNS))
    summary: dict[str, dict[str, float]] = {}
    for name in sides:
        cells = []
        for column in COLUMNS:
            values = [float(r[column]) for r in rounds if r["receiver"] == name]  # type: ignore[arg-type]
            summary.setdefault(name, {})[column] = statistics.median(values)
            cells.append(f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})")
        print(f"{name:<10}" + "".join(f" {cell:>24}" for cell in cells))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "commit": commit(),
                "spans_per_request": args.spans,
                "requests": args.requests,
                "connections": args.connections,
                "rounds": rounds,
                "median": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"raw results: {args.output}")


if __name__ == "__main__":
    main()
