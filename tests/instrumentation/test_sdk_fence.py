"""The fence around SDK internals: meshwatch's faster parts only where they match the SDK's, else the SDK's.

The checks are planted with a fault (a span class that loses an attribute, an
encoder that writes other bytes) to show they catch it; and a service run with
the fast path forced off must deliver the same telemetry as with it on.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from meshwatch import _sdk_fence
from meshwatch._span import MeshwatchSpan, MeshwatchTracerProvider
from meshwatch.collector.otlp_sink import otlp_sink, sink_env

from ._helpers import base_env


@pytest.fixture(autouse=True)
def _fresh_fence() -> Iterator[None]:
    _sdk_fence._CACHE.clear()
    yield
    _sdk_fence._CACHE.clear()


def test_the_fast_parts_pass_their_check_on_this_sdk() -> None:
    parts = _sdk_fence.sdk_parts()
    assert parts.tracer_provider is MeshwatchTracerProvider and parts.fast_spans and parts.fast_encoders
    assert parts.fast_logs
    assert parts.fallback_reason is None


def test_a_log_record_missing_a_field_of_the_sdks_falls_back_to_the_sdk_handler(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As if an SDK release added a LogRecord field the encoder reads: the SDK's handler takes over."""
    from meshwatch import _logs

    original = _logs._OTLPRecord.__init__

    def without_event_name(self: _logs._OTLPRecord, *args: object) -> None:
        original(self, *args)
        del self.event_name

    monkeypatch.setattr(_logs._OTLPRecord, "__init__", without_event_name)
    with caplog.at_level(logging.WARNING, logger="meshwatch"):
        parts = _sdk_fence.sdk_parts()
    assert not parts.fast_logs
    assert parts.fast_spans, "the span class passed its own check"
    assert "event_name" in (parts.fallback_reason or "")
    assert sum("stock OpenTelemetry SDK parts" in r.message for r in caplog.records) == 1


def test_forced_stock_parts_use_the_sdk_log_handler() -> None:
    assert not _sdk_fence.sdk_parts(fast_path=False).fast_logs


def test_a_span_class_that_records_differently_falls_back_to_the_sdks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = MeshwatchSpan.set_attribute

    def lossy(self: MeshwatchSpan, key: str, value: object) -> None:
        if key != "later":  # as if an SDK change made meshwatch's fast path drop one attribute
            original(self, key, value)

    monkeypatch.setattr(MeshwatchSpan, "set_attribute", lossy)
    with caplog.at_level(logging.WARNING, logger="meshwatch"):
        parts = _sdk_fence.sdk_parts()
    assert parts.tracer_provider is TracerProvider and not parts.fast_spans
    assert parts.fast_encoders, "the encoder passed its own check"
    assert "span class records spans differently" in (parts.fallback_reason or "")
    assert sum("stock OpenTelemetry SDK parts" in r.message for r in caplog.records) == 1


def test_an_encoder_that_writes_other_bytes_falls_back_to_the_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    import meshwatch._otlp

    monkeypatch.setattr(meshwatch._otlp, "encode_spans", lambda spans: b"")
    parts = _sdk_fence.sdk_parts()
    assert parts.fast_spans and not parts.fast_encoders
    assert parts.encode_spans is _sdk_fence._official_span_encoder


def test_a_missing_sdk_internal_falls_back_instead_of_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    import opentelemetry.sdk.trace._tracer_metrics as tracer_metrics

    monkeypatch.delattr(tracer_metrics, "NoOpTracerMetrics")
    monkeypatch.delitem(sys.modules, "meshwatch._span")
    monkeypatch.delitem(sys.modules, "meshwatch._otlp")
    parts = _sdk_fence.sdk_parts()
    assert parts.tracer_provider is TracerProvider and not parts.fast_encoders
    assert "ImportError" in (parts.fallback_reason or "")


_SCRIPT = """
import logging
from opentelemetry import trace
tracer = trace.get_tracer("fence")
for i in range(5):
    with tracer.start_as_current_span("step", attributes={"item": i, "tags": ["a", "b"]}) as span:
        span.add_event("half way", {"i": i})
        logging.getLogger("fence").warning("step done", extra={"item": i})
        try:
            raise ValueError(i)
        except ValueError:
            logging.getLogger("fence").exception("step failed", extra={"item": i})
logging.getLogger("fence").info("outside any span")
"""


def _log_summary(record: object) -> tuple[object, ...]:
    """What a user sees of a log record (the SDK's handler adds code.* attributes on top)."""
    attributes = {k: v for k, v in record.attributes.items() if not k.startswith(("code.", "exception.stacktrace"))}
    stack = record.attributes.get("exception.stacktrace", "")
    return (
        record.body,
        record.severity,
        bool(record.trace_id),
        tuple(sorted(attributes.items(), key=str)),
        "raise ValueError(i)" in stack,
    )


@pytest.mark.integration
def test_the_stock_parts_deliver_the_same_telemetry(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    seen = {}
    for fast in ("true", "false"):
        with otlp_sink() as sink:
            env = base_env(**sink_env(sink, OTEL_SERVICE_NAME="fence", MESHWATCH_SDK_FAST_PATH=fast))
            subprocess.run(["meshwatch-run", "python", str(script)], env=env, check=True, capture_output=True)
            with sink.lock:
                spans = sorted((s.name, s.kind, tuple(sorted(s.attributes.items(), key=str))) for s in sink.spans)
                logs = sorted(
                    (
                        _log_summary(r)
                        for r in sink.logs
                        if r.attributes.get("code.function.name", "") != "_log_started"
                        and not str(r.body).startswith("meshwatch ")
                    ),
                    key=str,
                )
        seen[fast] = (spans, logs)
    assert len(seen["true"][0]) == 5
    assert len(seen["true"][1]) == 11, seen["true"][1]
    assert (
        "step failed",
        "ERROR",
        True,
        (("exception.message", "3"), ("exception.type", "ValueError"), ("item", 3)),
        True,
    ) in seen["true"][1]
    assert seen["true"][0] == seen["false"][0]
    assert set(seen["true"][1]) ^ set(seen["false"][1]) == set(), (
        set(seen["true"][1]) - set(seen["false"][1]),
        set(seen["false"][1]) - set(seen["true"][1]),
    )
