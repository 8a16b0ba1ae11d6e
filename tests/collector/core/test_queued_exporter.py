"""The shared queue-and-retry machinery, driven by scripted senders (pure logic, no backend).

What reaches a real backend through it is proven in test_otlp_jaeger.py; here every
outcome a ``Sender`` can report is checked for what a user would see: items delivered,
retried, dead-lettered with their reason, counted.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import ComponentId, CreateSettings, Refused
from meshwatch.collector.host import CollectorHost
from meshwatch.collector.queued_exporter import queued_exporter
from meshwatch.collector.sender import ExporterSettings, PermanentError, SendResult, TransientError
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry
from meshwatch.stack.testing import eventually


def _request(n_spans: int, tag: int) -> bytes:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for i in range(n_spans):
        span = spans.add()
        span.trace_id = tag.to_bytes(16, "big")
        span.span_id = (i + 1).to_bytes(8, "big")
        span.name = f"op-{tag}"
    return req.SerializeToString()


class ScriptedSender:
    """Answers each send from a script of outcomes, then accepts; records what it was sent."""

    def __init__(self, script: list | None = None) -> None:
        self.script = list(script or [])
        self.sent: list[Batch] = []
        self.calls = 0
        self.lock = threading.Lock()

    thread_safe = False

    def start(self, host) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def send(self, batch: Batch) -> SendResult:
        with self.lock:
            self.calls += 1
            outcome = self.script.pop(0) if self.script else None
        if isinstance(outcome, Exception):
            raise outcome
        if callable(outcome):
            return outcome(batch)
        with self.lock:
            self.sent.append(batch)
        return outcome or SendResult()

    def spans(self) -> int:
        return sum(b.items for b in self.sent)


def _settings(**overrides) -> ExporterSettings:
    data = {
        "retry_on_failure": {"initial_interval": 0.01, "max_interval": 0.05},
        "sending_queue": {"fsync": "always", "num_consumers": 2},
    }
    for key, value in overrides.items():
        data.setdefault(key, {}).update(value)
    return ExporterSettings.model_validate(data)


def _exporter(tmp_path: Path, sender, **overrides):
    """The exporter, started, and the self-telemetry it was created with."""
    telemetry = Telemetry()
    settings = CreateSettings(ComponentId("test", "x"), Signal.TRACES, telemetry)
    exporter = queued_exporter(settings, _settings(**overrides), sender)
    exporter.start(CollectorHost(tmp_path))
    return exporter, telemetry


def _value(telemetry: Telemetry, name: str, **labels) -> float:
    return telemetry.registry.get_sample_value(name, labels) or 0.0


def test_batches_are_merged_delivered_and_counted(tmp_path: Path) -> None:
    def slow(batch: Batch) -> SendResult:  # while the first send takes its time, the rest queue up
        time.sleep(0.3)
        sender.sent.append(batch)
        return SendResult()

    sender = ScriptedSender([slow])
    exporter, telemetry = _exporter(tmp_path, sender, sending_queue={"num_consumers": 1})
    for tag in range(20):
        exporter.consume(Batch.from_bytes(Signal.TRACES, _request(10, tag)))
    eventually(lambda: sender.spans() == 200, timeout=10, what="all 200 spans sent")
    # records were merged into fewer sends, and a merged request decodes as one request
    assert sender.calls < 20
    merged = ExportTraceServiceRequest.FromString(max(sender.sent, key=lambda b: b.items).raw)
    assert len(merged.resource_spans) > 1
    labels = {"exporter": "test/x", "signal": "traces"}
    assert _value(telemetry, "meshwatch_exporter_queued_items_total", **labels) == 200
    eventually(lambda: _value(telemetry, "meshwatch_exporter_sent_items_total", **labels) == 200, timeout=5)
    eventually(lambda: _value(telemetry, "meshwatch_queue_size_items", **labels) == 0, timeout=5, what="queue empty")
    exporter.shutdown(5)


def test_transient_errors_are_retried_with_the_backends_retry_after(tmp_path: Path) -> None:
    sender = ScriptedSender(
        [TransientError("unavailable", "down", retry_after=0.3), TransientError("unavailable", "down")]
    )
    exporter, telemetry = _exporter(tmp_path, sender, sending_queue={"num_consumers": 1})
    start = time.monotonic()
    exporter.consume(Batch.from_bytes(Signal.TRACES, _request(5, 1)))
    eventually(lambda: sender.spans() == 5, timeout=10, what="delivered after retries")
    assert time.monotonic() - start >= 0.3  # the hint was honoured
    labels = {"exporter": "test/x", "signal": "traces"}
    assert _value(telemetry, "meshwatch_exporter_failed_items_total", reason="unavailable", **labels) == 10
    eventually(lambda: _value(telemetry, "meshwatch_exporter_backend_up", **labels) == 1, timeout=5)
    exporter.shutdown(5)


def test_permanent_errors_and_rejected_items_go_to_the_dead_letter_file(tmp_path: Path) -> None:
    def partly(batch: Batch) -> SendResult:
        return SendResult(
            rejected=2,
            rejected_reason="mapper_parsing_exception",
            dead_letters=[{"item": {"n": 1}, "error": "bad field"}, {"item": {"n": 2}, "error": "bad field"}],
        )

    sender = ScriptedSender([PermanentError("invalid_argument", "the backend refused the request"), partly])
    exporter, telemetry = _exporter(tmp_path, sender, sending_queue={"num_consumers": 1})
    exporter.consume(Batch.from_bytes(Signal.TRACES, _request(3, 1)))
    labels = {"exporter": "test/x", "signal": "traces"}
    eventually(lambda: _value(telemetry, "meshwatch_exporter_dropped_items_total", reason="rejected", **labels) == 3)
    exporter.consume(Batch.from_bytes(Signal.TRACES, _request(7, 2)))
    eventually(lambda: _value(telemetry, "meshwatch_exporter_dropped_items_total", reason="rejected", **labels) == 5)
    assert _value(telemetry, "meshwatch_exporter_sent_items_total", **labels) == 5
    lines = [json.loads(line) for line in (tmp_path / "deadletter" / "test-x.jsonl").read_text().splitlines()]
    assert lines[0]["reason"] == "invalid_argument" and lines[0]["items"] == 3
    replay = ExportTraceServiceRequest.FromString(__import__("base64").b64decode(lines[0]["request_protobuf_base64"]))
    assert replay.resource_spans[0].scope_spans[0].spans[0].name == "op-1"
    assert [line["reason"] for line in lines[1:]] == ["mapper_parsing_exception"] * 2
    assert lines[1]["error"] == "bad field"
    exporter.shutdown(5)


def test_partial_retry_resends_only_the_failed_items(tmp_path: Path) -> None:
    retry_part = Batch.from_bytes(Signal.TRACES, _request(2, 9))

    def half(batch: Batch) -> SendResult:
        return SendResult(retry=retry_part, retry_after=0.05)

    sender = ScriptedSender([half])
    exporter, telemetry = _exporter(tmp_path, sender, sending_queue={"num_consumers": 1})
    exporter.consume(Batch.from_bytes(Signal.TRACES, _request(6, 1)))
    eventually(lambda: sender.spans() == 2, what="the two retried spans sent")
    labels = {"exporter": "test/x", "signal": "traces"}
    eventually(lambda: _value(telemetry, "meshwatch_exporter_sent_items_total", **labels) == 6)
    assert _value(telemetry, "meshwatch_exporter_failed_items_total", reason="partial", **labels) == 2
    exporter.shutdown(5)


def test_max_elapsed_time_expires_a_batch_and_counts_it(tmp_path: Path) -> None:
    sender = ScriptedSender([TransientError("unavailable", "down")] * 1000)
    exporter, telemetry = _exporter(tmp_path, sender, retry_on_failure={"max_elapsed_time": 0.3})
    exporter.consume(Batch.from_bytes(Signal.TRACES, _request(4, 1)))
    labels = {"exporter": "test/x", "signal": "traces"}
    eventually(lambda: _value(telemetry, "meshwatch_exporter_dropped_items_total", reason="expired", **labels) == 4)
    assert _value(telemetry, "meshwatch_exporter_backend_up", **labels) == 0
    exporter.shutdown(5)


def test_full_queue_pushes_back_and_restart_resumes_from_disk(tmp_path: Path) -> None:
    sender = ScriptedSender([TransientError("unavailable", "down")] * 100_000)
    exporter, _ = _exporter(tmp_path, sender, sending_queue={"queue_size": 30, "num_consumers": 1})
    for tag in range(3):
        exporter.consume(Batch.from_bytes(Signal.TRACES, _request(10, tag)))
    with pytest.raises(Refused) as refused:
        exporter.consume(Batch.from_bytes(Signal.TRACES, _request(10, 99)))
    assert refused.value.reason == "queue_full" and refused.value.retryable
    exporter.shutdown(1)

    healthy = ScriptedSender()
    again, _ = _exporter(tmp_path, healthy, sending_queue={"queue_size": 30, "num_consumers": 1})
    eventually(lambda: healthy.spans() == 30, timeout=10, what="the 30 queued spans sent after restart")
    names = {s.name for b in healthy.sent for rs in b.message.resource_spans for ss in rs.scope_spans for s in ss.spans}
    assert names == {"op-0", "op-1", "op-2"}
    again.shutdown(5)


def test_shutdown_refuses_new_data(tmp_path: Path) -> None:
    exporter, _ = _exporter(tmp_path, ScriptedSender())
    exporter.shutdown(1)
    with pytest.raises(Refused) as refused:
        exporter.consume(Batch.from_bytes(Signal.TRACES, _request(1, 1)))
    assert refused.value.reason == "shutting_down"


def test_linger_merges_requests_that_arrive_close_together(tmp_path: Path) -> None:
    sender = ScriptedSender()
    exporter, _ = _exporter(tmp_path, sender, sending_queue={"num_consumers": 1}, batch={"linger": 0.3})
    for tag in range(5):
        exporter.consume(Batch.from_bytes(Signal.TRACES, _request(10, tag)))
        time.sleep(0.02)
    eventually(lambda: sender.spans() == 50, timeout=10, what="all spans sent")
    assert sender.calls <= 2  # one send (two if the first record was picked up before the rest arrived)
    exporter.shutdown(5)


class PoisonRefuser:
    """A backend that refuses, as a whole, any request carrying a span named ``poison``."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.calls = 0
        self.lock = threading.Lock()

    thread_safe = False

    def start(self, host) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def send(self, batch: Batch) -> SendResult:
        request = ExportTraceServiceRequest.FromString(batch.raw)
        names = [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        with self.lock:
            self.calls += 1
            if "poison" in names:
                raise PermanentError("invalid_argument", "invalid TraceID length")
            self.delivered.extend(names)
        return SendResult()


def _poisoned(n_spans: int, tag: int) -> bytes:
    request = ExportTraceServiceRequest.FromString(_request(n_spans, tag))
    request.resource_spans[0].scope_spans[0].spans[0].name = "poison"
    return request.SerializeToString()


@pytest.mark.parametrize("poisoned", [{7}, {0, 31}, {3, 4, 5}], ids=["one", "first-and-last", "three-adjacent"])
def test_a_refused_merged_send_is_split_so_only_the_bad_requests_are_dead_lettered(
    tmp_path: Path, poisoned: set[int]
) -> None:
    sender = PoisonRefuser()
    exporter, telemetry = _exporter(tmp_path, sender, sending_queue={"num_consumers": 1}, batch={"linger": 0.5})
    bad: dict[int, bytes] = {}
    for tag in range(32):
        body = _poisoned(10, tag) if tag in poisoned else _request(10, tag)
        bad.update({tag: body} if tag in poisoned else {})
        exporter.consume(Batch.from_bytes(Signal.TRACES, body))
    good = [f"op-{tag}" for tag in range(32) if tag not in poisoned]
    eventually(lambda: sorted(set(sender.delivered)) == sorted(good), timeout=10, what="every good request sent")
    labels = {"exporter": "test/x", "signal": "traces"}
    expected_dropped = 10 * len(poisoned)
    eventually(
        lambda: (
            _value(telemetry, "meshwatch_exporter_dropped_items_total", reason="rejected", **labels) == expected_dropped
        )
    )
    eventually(lambda: _value(telemetry, "meshwatch_queue_size_items", **labels) == 0, timeout=5, what="queue empty")
    assert len(sender.delivered) == 10 * len(good)  # every good span once: a refused send delivered nothing
    assert _value(telemetry, "meshwatch_exporter_sent_items_total", **labels) == 10 * len(good)
    lines = [json.loads(line) for line in (tmp_path / "deadletter" / "test-x.jsonl").read_text().splitlines()]
    replayed = sorted(base64.b64decode(line["request_protobuf_base64"]) for line in lines)
    assert replayed == sorted(bad.values())  # exactly the poisoned requests, each whole, nothing else
    assert all(line["items"] == 10 and line["reason"] == "invalid_argument" for line in lines)
    assert sender.calls <= 1 + 2 * len(poisoned) * 6  # a bisection, not one send per request
    exporter.shutdown(5)
