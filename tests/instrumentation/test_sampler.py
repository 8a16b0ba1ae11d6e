"""meshwatch's sampler: the SDK's decisions, except that unsampled spans are still recorded."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

from meshwatch._metrics import HTTP_DURATION_BUCKETS
from meshwatch._red import RedMetrics
from meshwatch._span import MeshwatchTracerProvider
from meshwatch._traces import MeshwatchSpanProcessor, SwitchableSampler, build_sampler

STATE = TraceState([("vendor", "x")])


def _parents() -> list[object]:
    contexts = [None, trace.set_span_in_context(NonRecordingSpan(SpanContext(0, 0, False)))]
    for remote in (True, False):
        for flags in (TraceFlags.SAMPLED, TraceFlags.DEFAULT):
            parent = SpanContext(0xABC, 0xDEF, is_remote=remote, trace_flags=TraceFlags(flags), trace_state=STATE)
            contexts.append(trace.set_span_in_context(NonRecordingSpan(parent)))
    return contexts


@pytest.mark.parametrize(
    ("name", "rate"),
    [("parentbased_traceidratio", 1.0), ("parentbased_always_off", 1.0), ("parentbased_traceidratio", 0.0)],
)
def test_decisions_match_the_sdk_sampler_with_drops_recorded(name: str, rate: float) -> None:
    inner = build_sampler(name, rate)
    ours = SwitchableSampler(inner)
    # the default at 100 %: decided without the delegate chain
    assert ours.decides_without_delegate is (rate == 1.0)
    for parent in _parents():
        expected = inner.should_sample(parent, 0x1234, "op", attributes={"a": 1})
        got = ours.should_sample(parent, 0x1234, "op", attributes={"a": 1})
        if expected.decision is sampling.Decision.DROP:
            assert got.decision is sampling.Decision.RECORD_ONLY
            assert dict(got.attributes) == {"a": 1}  # kept: RED metrics need the start attributes
        else:
            assert got.decision is expected.decision
            assert dict(got.attributes) == dict(expected.attributes)
        assert got.trace_state == expected.trace_state


def test_a_second_init_can_switch_the_sampler() -> None:
    ours = SwitchableSampler(build_sampler("parentbased_traceidratio", 1.0))
    ours.inner = build_sampler("always_off", 1.0)
    assert not ours.decides_without_delegate
    assert ours.should_sample(None, 1, "op").decision is sampling.Decision.RECORD_ONLY
    assert "AlwaysOffSampler" in ours.get_description()


# --- one decision, whichever tracer asks -------------------------------------------------


class _FixedIds(IdGenerator):
    """Root trace ids that TraceIdRatioBased(0.5) keeps (low) and drops (high), in turn."""

    def __init__(self) -> None:
        self._roots = iter([1 << 60, (1 << 64) - 1] * 100)
        self._span = 0x10

    def generate_span_id(self) -> int:
        self._span += 1
        return self._span

    def generate_trace_id(self) -> int:
        return next(self._roots)


_SAMPLERS = [
    ("parentbased_traceidratio", 1.0),
    ("parentbased_traceidratio", 0.5),
    ("parentbased_always_off", 1.0),
    ("always_off", 1.0),
    ("traceidratio", 0.5),
]
_START = {"http.request.method": "GET", "url.scheme": "http", "http.route": "/items/{id}"}


def _outcomes(provider_class: type[TracerProvider], name: str, rate: float) -> list[tuple[object, ...]]:
    provider = provider_class(
        sampler=SwitchableSampler(build_sampler(name, rate)), id_generator=_FixedIds(), shutdown_on_exit=False
    )
    tracer = provider.get_tracer("sampler-test")
    seen = []
    for parent in _parents():
        for kind in (SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL):
            span = tracer.start_span("op", context=parent, kind=kind, attributes=_START)
            context = span.get_span_context()
            seen.append(
                (
                    span.is_recording(),
                    context.trace_flags.sampled,
                    context.trace_state,
                    dict(span.attributes) if span.is_recording() else None,
                )
            )
            span.end()
    return seen


@pytest.mark.parametrize(("name", "rate"), _SAMPLERS)
def test_meshwatch_tracer_and_sdk_tracer_reach_the_same_decision(name: str, rate: float) -> None:
    """Both tracers sample through SwitchableSampler.decide: same recording, flags, state, attributes."""
    ours = _outcomes(MeshwatchTracerProvider, name, rate)
    stock = _outcomes(TracerProvider, name, rate)
    assert ours == stock
    assert all(recording for recording, *_ in ours), "every span is recorded, sampled or not"
    assert all(attributes == _START for *_, attributes in ours), "start attributes kept when unsampled"
    assert any(not sampled for _, sampled, *_ in ours), "unsampled parents are followed"


def test_decide_is_the_only_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither tracer decides by itself: each span start is one call of SwitchableSampler.decide."""
    calls: list[str] = []
    original = SwitchableSampler.decide

    def counting(self: SwitchableSampler, *args: object, **kwargs: object) -> object:
        calls.append("decide")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SwitchableSampler, "decide", counting)
    for provider_class in (MeshwatchTracerProvider, TracerProvider):
        calls.clear()
        _outcomes(provider_class, "parentbased_traceidratio", 1.0)
        assert len(calls) == len(_parents()) * 3, provider_class.__name__


@pytest.mark.parametrize("provider_class", [MeshwatchTracerProvider, TracerProvider])
def test_an_unsampled_request_is_counted_by_route_in_red_metrics(provider_class: type[TracerProvider]) -> None:
    """sample_rate 0: nothing exported, yet active requests (start attributes) and duration by route count it."""
    red = RedMetrics(HTTP_DURATION_BUCKETS)
    processor = MeshwatchSpanProcessor(red)
    exported: list[object] = []
    processor.add_listener(exported.append)  # sampled spans only
    provider = provider_class(
        sampler=SwitchableSampler(build_sampler("parentbased_traceidratio", 0.0)),
        active_span_processor=processor,
        shutdown_on_exit=False,
    )
    tracer = provider.get_tracer("red-test")
    # (active requests are reported once a first request ended)
    for _ in range(2):
        span = tracer.start_span("GET /items/{id}", kind=SpanKind.SERVER, attributes=_START)
        assert not span.get_span_context().trace_flags.sampled
        active = {m.name: m for m in red.metrics()}.get("http.server.active_requests")
        assert active is None or [p.value for p in active.data.data_points] == [1], "read from the start attributes"
        span.set_attribute("http.response.status_code", 200)
        span.end()
    duration = {m.name: m for m in red.metrics()}["http.server.request.duration"]
    assert [(p.attributes.get("http.route"), p.count) for p in duration.data.data_points] == [("/items/{id}", 2)]
    assert active is not None
    assert exported == []
