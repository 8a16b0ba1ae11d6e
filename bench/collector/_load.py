"""Shared pieces of the collector benchmarks: load processes, Jaeger probes, process accounting.

The load is realistic OTLP/gRPC: 512-span requests (8 traces of 64 spans, ~10 attributes
per span, as an SDK's batch span processor sends them), each with fresh trace ids, from
separate processes so the load generator's CPU is never the collector's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

TRACES_PER_REQUEST = 8
SPANS_PER_TRACE = 64
SPANS_PER_REQUEST = TRACES_PER_REQUEST * SPANS_PER_TRACE
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_TICK = os.sysconf("SC_CLK_TCK")


def placeholder(index: int) -> bytes:
    return bytes([0xA0 + index]) * 15 + b"\x5a"


def realistic_request(service: str = "bench-checkout") -> bytes:
    """One request of 512 spans with placeholder trace ids (swapped per send)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for key, value in (
        ("service.name", service),
        ("service.version", "1.4.2"),
        ("host.name", "bench-1"),
        ("deployment.environment.name", "bench"),
        ("telemetry.sdk.language", "python"),
    ):
        attr = rs.resource.attributes.add()
        attr.key, attr.value.string_value = key, value
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "opentelemetry.instrumentation.fastapi", "0.50b0"
    now = time.time_ns()
    for t in range(TRACES_PER_REQUEST):
        for i in range(SPANS_PER_TRACE):
            span = ss.spans.add()
            span.trace_id = placeholder(t)
            span.span_id = (t * 1000 + i + 1).to_bytes(8, "big")
            if i:
                span.parent_span_id = (t * 1000 + 1).to_bytes(8, "big")
            span.name = "GET /api/orders/{id}" if i == 0 else f"SELECT orders {i % 7}"
            span.kind = 2 if i == 0 else 3
            span.start_time_unix_nano = now + i * 10_000
            span.end_time_unix_nano = span.start_time_unix_nano + 1_000_000 + i * 1000
            span.status.code = 2 if i % 50 == 7 else 0
            for key, value in (
                ("http.request.method", "GET"),
                ("http.route", "/api/orders/{id}"),
                ("http.response.status_code", 200),
                ("url.scheme", "http"),
                ("server.address", "checkout"),
                ("server.port", 8080),
                ("network.protocol.version", "1.1"),
                ("user_agent.original", "python-httpx/0.27"),
                ("db.system", "postgresql"),
                ("db.statement", "SELECT * FROM orders WHERE id = $1"),
            ):
                attr = span.attributes.add()
                attr.key = key
                if isinstance(value, int):
                    attr.value.int_value = value
                else:
                    attr.value.string_value = value
    return request.SerializeToString()


def _load_process(endpoint: str, threads: int, stop: Any, acked: Any, refused: Any, rate: float) -> None:  # noqa: PLR0917
    import grpc

    template = realistic_request()
    per_thread_interval = threads / rate if rate else 0.0

    def loop() -> None:
        channel = grpc.insecure_channel(endpoint)
        export = channel.unary_unary(EXPORT)
        next_at = time.monotonic()
        while not stop.is_set():
            body = template
            for t in range(TRACES_PER_REQUEST):
                body = body.replace(placeholder(t), os.urandom(16))
            try:
                export(body, timeout=30)
                with acked.get_lock():
                    acked.value += SPANS_PER_REQUEST
            except grpc.RpcError:
                with refused.get_lock():
                    refused.value += SPANS_PER_REQUEST
                time.sleep(0.05)
            if per_thread_interval:
                next_at += per_thread_interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()
        channel.close()

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


class Load:
    """``processes`` × ``threads`` closed-loop senders; ``rate`` (requests/s in total) caps them if set."""

    def __init__(self, endpoint: str, *, processes: int = 2, threads: int = 4, rate: float = 0.0) -> None:
        ctx = mp.get_context("spawn")
        self.stop_event = ctx.Event()
        self.acked = ctx.Value("q", 0)
        self.refused = ctx.Value("q", 0)
        per_process_rate = rate / processes if rate else 0.0
        self.procs = [
            ctx.Process(
                target=_load_process,
                args=(endpoint, threads, self.stop_event, self.acked, self.refused, per_process_rate),
                daemon=True,
            )
            for _ in range(processes)
        ]

    def start(self) -> Load:
        for p in self.procs:
            p.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for p in self.procs:
            p.join(60)


@dataclass
class ProcStats:
    """CPU seconds (user+system) and peak RSS of one process, from /proc."""

    pid: int

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0


@dataclass
class Probe:
    """Sends a one-span trace every ``interval`` s and times until Jaeger's query API returns it."""

    endpoint: str
    jaeger_url: str
    interval: float = 0.5
    delays: list[float] = field(default_factory=list)
    lost: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Probe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        import grpc

        channel = grpc.insecure_channel(self.endpoint)
        export = channel.unary_unary(EXPORT)
        while not self._stop.wait(self.interval):
            trace_id = os.urandom(16)
            request = ExportTraceServiceRequest()
            rs = request.resource_spans.add()
            attr = rs.resource.attributes.add()
            attr.key, attr.value.string_value = "service.name", "bench-probe"
            span = rs.scope_spans.add().spans.add()
            span.trace_id, span.span_id, span.name = trace_id, os.urandom(8), "probe"
            span.start_time_unix_nano = time.time_ns()
            span.end_time_unix_nano = span.start_time_unix_nano + 1000
            sent = time.monotonic()
            try:
                export(request.SerializeToString(), timeout=30)
            except grpc.RpcError:
                continue
            while time.monotonic() - sent < 30:
                try:
                    with urllib.request.urlopen(f"{self.jaeger_url}/api/traces/{trace_id.hex()}", timeout=5):
                        self.delays.append(time.monotonic() - sent)
                        break
                except (urllib.error.URLError, OSError):
                    time.sleep(0.02)
            else:
                self.lost += 1
        channel.close()

    def percentiles(self) -> tuple[float, float]:
        if not self.delays:
            return float("nan"), float("nan")
        ordered = sorted(self.delays)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        return statistics.median(ordered), p99


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def terminate(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
