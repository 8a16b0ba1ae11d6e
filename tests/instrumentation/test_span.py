"""MeshwatchSpan keeps the SDK Span's behaviour: same attributes, limits, warnings, thread safety."""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official_spans
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from meshwatch._span import MeshwatchSpan, MeshwatchTracerProvider


class _Color(enum.IntEnum):
    RED = 1


class _NoStr:
    __slots__ = ()


class _Named:
    def __str__(self) -> str:
        return "named"


#: Attribute writes that exercise every branch: valid primitives, limits, conversions, rejections.
CASES: list[tuple[Any, Any]] = [
    ("http.request.method", "GET"),
    ("http.response.status_code", 200),
    ("ratio", 0.5),
    ("flag", True),
    ("raw", b"\x00\x01"),
    ("nothing", None),
    ("long", "x" * 40),  # truncated to the length limit
    ("list", [1, 2, 3]),  # made a tuple
    ("strings", ["abc", "y" * 40]),  # each truncated
    ("mapping", {"a": 1, "": 2}),  # copied, the empty key dropped
    ("enum", _Color.RED),  # int subclass: kept as is
    ("object", _NoStr()),  # no __str__: None
    ("named", _Named()),  # stringified
    ("", "empty key"),  # rejected
    ("http.request.method", "POST"),  # overwrite moves the key to the end
]


def _providers(limits: SpanLimits) -> list[tuple[str, TracerProvider, InMemorySpanExporter]]:
    out = []
    for name, cls in (("sdk", TracerProvider), ("meshwatch", MeshwatchTracerProvider)):
        exporter = InMemorySpanExporter()
        provider = cls(span_limits=limits, shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        out.append((name, provider, exporter))
    return out


def _outcome(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    write: Callable[[Any], None],
    initial: dict[str, Any] | None = None,
) -> tuple[Any, ...]:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        span = provider.get_tracer("test").start_span("op", kind=SpanKind.SERVER, attributes=initial)
        write(span)
        span.end()
    finished = exporter.get_finished_spans()[-1]
    attributes = [(k, repr(v)) for k, v in finished.attributes.items()]  # order matters: eviction is by age
    return attributes, finished.dropped_attributes, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("length_limit", [8, None])
@pytest.mark.parametrize("count_limit", [None, 6, 5, 0])
def test_attributes_limits_and_warnings_match_the_sdk_span(
    count_limit: int | None, length_limit: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    limits = SpanLimits(max_span_attributes=count_limit, max_span_attribute_length=length_limit)
    results: dict[str, list[tuple[Any, ...]]] = {}
    for name, provider, exporter in _providers(limits):

        def one_by_one(span: Span) -> None:
            for key, value in CASES:
                span.set_attribute(key, value)

        def all_at_once(span: Span) -> None:
            span.set_attributes({key: value for key, value in CASES[:-1]})
            span.set_attributes({CASES[-1][0]: CASES[-1][1], 7: "non-str key"})

        def plain_batches(span: Span) -> None:
            # Only valid primitives: re-set keys move to the end, the count limit evicts the oldest.
            span.set_attributes({"http.route": "/items/{id}", "url.scheme": "https", "http.response.status_code": 200})
            span.set_attributes({"error.type": "500", "http.request.method": "GET", "n": 1.5, "raw": b"x"})

        plain_start = {"url.scheme": "http", "http.request.method": "GET", "server.port": 8000, "flag": False}
        results[name] = [
            _outcome(provider, exporter, caplog, one_by_one),
            _outcome(provider, exporter, caplog, all_at_once),
            _outcome(provider, exporter, caplog, lambda span: None, initial=dict(CASES[:-1])),
            _outcome(provider, exporter, caplog, plain_batches, initial=plain_start),
        ]
    assert results["meshwatch"] == results["sdk"]
    if length_limit is None:
        return
    if count_limit == 6:
        attributes, dropped, messages = results["meshwatch"][0]
        assert len(attributes) == 6
        assert dropped == len(CASES) - 6 - 1 + 1  # evictions plus the rejected empty key, the overwrite is no drop
        assert any("Attributes dict is full" in m for m in messages)
    if count_limit is None:
        attributes = dict(results["meshwatch"][0][0])
        assert attributes["long"] == repr("x" * 8)
        assert attributes["list"] == repr((1, 2, 3))
        assert attributes["object"] == "None"
        assert "" not in attributes


def test_invalid_values_are_rejected_with_the_sdk_warning(caplog: pytest.LogCaptureFixture) -> None:
    ((_, provider, exporter),) = _providers(SpanLimits())[1:]
    with caplog.at_level(logging.WARNING):
        span = provider.get_tracer("test").start_span("op")
        assert isinstance(span, MeshwatchSpan)
        span.set_attribute("", "value")
        span.set_attribute("object", _NoStr())
        span.end()
        span.set_attribute("late", 1)
    finished = exporter.get_finished_spans()[0]
    assert dict(finished.attributes) == {"object": None}
    assert finished.dropped_attributes == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("invalid key ``. must be non-empty string") for m in messages)
    assert any(m.startswith("Invalid type `<class 'test_span._NoStr'>`") or "Invalid type" in m for m in messages)
    assert "Setting attribute on ended span." in messages


def test_concurrent_set_attribute_loses_nothing_and_keeps_the_limit() -> None:
    threads, per_thread = 8, 2000
    for limit in (SpanLimits.UNSET, 100):  # UNSET: no limit (None would mean the default, 128)
        ((_, provider, exporter),) = _providers(SpanLimits(max_span_attributes=limit))[1:]
        span = provider.get_tracer("test").start_span("op")
        barrier = threading.Barrier(threads)

        def writer(n: int, span: Any = span, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            for i in range(per_thread):
                if i % 2:
                    span.set_attribute(f"t{n}.k{i}", i)
                else:
                    span.set_attributes({f"t{n}.k{i}": str(i)})

        workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        span.end()
        finished = exporter.get_finished_spans()[0]
        total = threads * per_thread
        if limit == SpanLimits.UNSET:
            assert len(finished.attributes) == total
            assert finished.dropped_attributes == 0
        else:
            assert len(finished.attributes) == limit
            assert finished.dropped_attributes == total - limit


def test_events_links_status_and_export_work_as_with_the_sdk_span(caplog: pytest.LogCaptureFixture) -> None:
    limits = SpanLimits(max_events=2, max_links=1, max_event_attributes=1)
    encoded = {}
    for name, provider, exporter in _providers(limits):
        tracer = provider.get_tracer("test", "1.0")
        parent = tracer.start_span("parent")
        span = tracer.start_span("child", context=None, kind=SpanKind.CLIENT)
        for i in range(3):
            span.add_event(f"e{i}", {"a": i, "b": i}, timestamp=1000 + i)
        span.add_link(parent.get_span_context(), {"why": "test"})
        span.add_link(parent.get_span_context())
        span.update_name("renamed")
        span.set_attribute("k", "v")
        with caplog.at_level(logging.WARNING):
            span.end(end_time=5000)
            span.add_event("late")
        assert any("ended span" in r.getMessage() for r in caplog.records)
        finished = exporter.get_finished_spans()[0]
        assert isinstance(finished, ReadableSpan)
        assert finished.name == "renamed"
        assert [e.name for e in finished.events] == ["e1", "e2"]
        assert finished.dropped_events == 1
        assert [dict(e.attributes) for e in finished.events] == [{"b": 1}, {"b": 2}]  # oldest evicted
        assert len(finished.links) == 1
        assert finished.dropped_links == 1
        # A span with no events or links exports the same empty lists and zero drops.
        bare = tracer.start_span("bare", links=[Link(parent.get_span_context())])
        bare.end(end_time=6000)
        parent.end(end_time=7000)
        spans = exporter.get_finished_spans()
        assert spans[1].events == () and spans[1].dropped_events == 0
        assert len(spans[1].links) == 1
        encoded[name] = [
            (s.name, s.kind, dict(s.attributes), s.end_time, s.dropped_attributes, len(s.events), len(s.links))
            for s in spans
        ]
        request = official_spans(spans)  # the official OTLP encoder accepts them
        assert len(request.resource_spans[0].scope_spans[0].spans) == 3
    assert encoded["meshwatch"] == encoded["sdk"]


def test_span_has_every_field_the_sdk_span_has() -> None:
    """Catches an SDK upgrade adding span state that MeshwatchSpan's __init__ would not set."""
    sdk, mine = (p.get_tracer("t").start_span("op") for p in (TracerProvider(), MeshwatchTracerProvider()))
    assert isinstance(mine, MeshwatchSpan)
    assert isinstance(mine, Span)
    assert set(vars(mine)) == set(vars(sdk))


def test_span_contexts_are_the_ones_the_sdk_would_build() -> None:
    """MeshwatchTracer builds SpanContext tuples directly and reads them by position."""
    provider = MeshwatchTracerProvider(shutdown_on_exit=False)
    tracer = provider.get_tracer("t")
    root = tracer.start_span("root")
    remote_parent = SpanContext(
        0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v")])
    )
    child = tracer.start_span("child", context=set_span_in_context(NonRecordingSpan(remote_parent)))
    for span, parent in ((root, None), (child, remote_parent)):
        ctx = span.get_span_context()
        rebuilt = SpanContext(ctx.trace_id, ctx.span_id, False, ctx.trace_flags, ctx.trace_state)
        assert ctx == rebuilt
        assert ctx.is_valid and not ctx.is_remote and ctx.trace_flags.sampled
        # random ids for a new trace; a child keeps what its parent's flags say
        assert ctx.trace_flags.random_trace_id is (parent is None)
        assert span.parent == parent
    assert child.get_span_context().trace_id == 0xABC
    assert child.get_span_context().trace_state == remote_parent.trace_state
    assert root.get_span_context().trace_state == TraceState()


def test_a_span_can_be_given_its_own_attributes_back() -> None:
    """The attributes share the span's lock and may be a view of the dict being written: no deadlock, no loss."""
    for limits in (SpanLimits(), SpanLimits(max_span_attribute_length=8)):
        ((_, provider, exporter),) = _providers(limits)[1:]
        span = provider.get_tracer("t").start_span("op", attributes={"a": 1, "b": "x"})
        done = threading.Event()

        def copy_onto_itself(span: Any = span, done: threading.Event = done) -> None:
            span.set_attributes(span.attributes)
            span.set_attributes(dict(span.attributes))
            span.set_attributes(span._attributes)
            done.set()

        worker = threading.Thread(target=copy_onto_itself, daemon=True)
        worker.start()
        assert done.wait(10), "set_attributes(span.attributes) deadlocked"
        span.end()
        assert dict(exporter.get_finished_spans()[0].attributes) == {"a": 1, "b": "x"}
