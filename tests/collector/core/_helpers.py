"""Requests and Jaeger look-ups shared by the collector core tests."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def jaeger_exporter(jaeger: Any, **extra: Any) -> dict[str, Any]:
    """An ``otlp`` exporter section pointing at a Jaeger server."""
    return {"endpoint": jaeger.urls["otlp_grpc"], "tls": {"insecure": True}, **extra}


def traces_config(jaeger: Any, *, exporter: dict[str, Any] | None = None, receiver: dict | None = None) -> dict:
    return {
        "receivers": {"otlp": receiver or {}},
        "exporters": {"otlp/jaeger": exporter or jaeger_exporter(jaeger)},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger"]}}},
    }


def span_request(trace_ids: list[bytes], spans_per_trace: int = 1, service: str = "core-test") -> bytes:
    """A request with the given traces, each span with ~10 attributes (realistic size)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    attr = rs.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", service
    spans = rs.scope_spans.add()
    spans.scope.name = "meshwatch.tests"
    for t, trace_id in enumerate(trace_ids):
        for i in range(spans_per_trace):
            span = spans.spans.add()
            span.trace_id = trace_id
            span.span_id = (t * 1000 + i + 1).to_bytes(8, "big")
            span.name = f"GET /items/{i}"
            span.kind = 2
            span.start_time_unix_nano = 1_700_000_000_000_000_000 + i * 1000
            span.end_time_unix_nano = span.start_time_unix_nano + 1_500_000
            for k in range(10):
                a = span.attributes.add()
                a.key = f"attr.{k}"
                a.value.string_value = f"value-{k}-{i}"
    return request.SerializeToString()


def random_trace_ids(n: int) -> list[bytes]:
    return [os.urandom(16) for _ in range(n)]


def jaeger_trace(jaeger: Any, trace_id: bytes | str) -> dict[str, Any] | None:
    """The trace as Jaeger's query API returns it, or None if it is not there (yet)."""
    hex_id = trace_id.hex() if isinstance(trace_id, bytes) else trace_id
    try:
        with urllib.request.urlopen(f"{jaeger.url}/api/traces/{hex_id}", timeout=10) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    traces = data.get("data") or []
    return traces[0] if traces else None


def jaeger_span_count(jaeger: Any, trace_id: bytes) -> int:
    trace = jaeger_trace(jaeger, trace_id)
    return len(trace["spans"]) if trace else 0


class SpanLoad:
    """Sends OTLP/gRPC requests (one new trace of ``spans`` spans each) from threads and records the outcome.

    ``acked`` holds the trace ids the collector acknowledged; ``refused`` counts answers by
    status code. The request bytes are built once; each request swaps in a new trace id.
    """

    _PLACEHOLDER = b"\xa5" * 16

    def __init__(self, endpoint: str, *, spans: int = 100, threads: int = 2, service: str = "load") -> None:
        import threading

        self.endpoint = endpoint
        self.spans = spans
        self.template = span_request([self._PLACEHOLDER], spans_per_trace=spans, service=service)
        self.acked: list[bytes] = []
        self.refused: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._inflight = 0
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def start(self) -> SpanLoad:
        for thread in self._threads:
            thread.start()
        return self

    def pause(self) -> None:
        """Stop sending and wait until no request is in flight (so ``acked`` is final until ``resume``)."""
        import time

        self._running.clear()
        while self._inflight:
            time.sleep(0.01)

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        for thread in self._threads:
            thread.join(30)

    def _loop(self) -> None:
        import time

        import grpc

        channel = grpc.insecure_channel(self.endpoint)
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        while not self._stop.is_set():
            self._running.wait()
            with self._lock:
                if not self._running.is_set():
                    continue
                self._inflight += 1
            if self._stop.is_set():
                with self._lock:
                    self._inflight -= 1
                break
            trace_id = os.urandom(16)
            try:
                export(self.template.replace(self._PLACEHOLDER, trace_id), timeout=10)
            except grpc.RpcError as error:
                with self._lock:
                    code = error.code().name
                    self.refused[code] = self.refused.get(code, 0) + 1
                    self._inflight -= 1
                time.sleep(0.05)
                continue
            with self._lock:
                self.acked.append(trace_id)
                self._inflight -= 1
        channel.close()

    @property
    def acked_spans(self) -> int:
        return len(self.acked) * self.spans


def check_all_arrived(jaeger: Any, trace_ids: list[bytes], spans: int, *, timeout: float = 120) -> dict[str, int]:
    """Wait until every trace has all its spans in Jaeger; return counts of missing and duplicate spans."""
    import time

    deadline = time.monotonic() + timeout
    pending = list(trace_ids)
    seen: dict[bytes, int] = {}
    while pending and time.monotonic() < deadline:
        still = []
        for trace_id in pending:
            count = jaeger_span_count(jaeger, trace_id)
            if count >= spans:
                seen[trace_id] = count
            else:
                still.append(trace_id)
        pending = still
        if pending:
            time.sleep(1)
    for trace_id in pending:
        seen[trace_id] = jaeger_span_count(jaeger, trace_id)
    missing = sum(max(0, spans - n) for n in seen.values())
    duplicates = sum(max(0, n - spans) for n in seen.values())
    return {
        "traces": len(trace_ids),
        "missing_spans": missing,
        "duplicate_spans": duplicates,
        "missing_traces": len(pending),
    }


def sink_exporter(sink: Any) -> dict[str, Any]:
    """An ``otlphttp`` exporter to a counting ``OtlpSink`` (meshwatch.collector.otlp_sink), which merges nothing."""
    return {
        "endpoint": sink.url,
        "sending_queue": {"fsync": "interval", "num_consumers": SINK_CONSUMERS},
        "retry_on_failure": {"initial_interval": 0.2, "max_interval": 2},
        "batch": {"max_items": SINK_BATCH_ITEMS},
    }


#: The sink exporter's workers and batch size: at a crash at most this many spans are in flight
#: (sent, not yet acknowledged by the sink), so at most this many are sent again after a restart.
SINK_CONSUMERS = 2
SINK_BATCH_ITEMS = 1000


def count_at_sink(sink: Any, trace_ids: list[bytes], spans: int, *, timeout: float = 120) -> dict[str, int]:
    """Wait until every trace has all its spans at the sink; then count missing spans and duplicates.

    Unlike Jaeger's query API the sink keeps every copy it receives, so a span sent twice
    (sent when the collector was killed, sent again after its restart) counts twice.
    """
    import time

    wanted = {t.hex() for t in trace_ids}

    def per_trace() -> dict[str, int]:
        counts = dict.fromkeys(wanted, 0)
        for trace_id, _span_id in sink.span_ids():
            if trace_id in counts:
                counts[trace_id] += 1
        return counts

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(n < spans for n in per_trace().values()):
        time.sleep(0.5)
    # Copies still in flight when the first copy of every span is in (a request sent twice,
    # a batch resent after a restart) must be counted too: wait until the sink is quiet.
    quiet_for, last = 0.0, -1
    while time.monotonic() < deadline and quiet_for < 1.5:
        with sink.lock:
            now = len(sink.spans)
        quiet_for = quiet_for + 0.25 if now == last else 0.0
        last = now
        time.sleep(0.25)
    missing = sum(max(0, spans - n) for n in per_trace().values())
    with sink.lock:
        received = sum(1 for s in sink.spans if s.trace_id in wanted)
    distinct = sum(per_trace().values())
    return {"traces": len(trace_ids), "missing_spans": missing, "duplicate_spans": received - distinct}
