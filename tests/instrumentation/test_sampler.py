"""meshwatch's sampler: the SDK's decisions, except that unsampled spans are still recorded."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from meshwatch._traces import SwitchableSampler, build_sampler

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
    if rate == 1.0:
        assert ours.static_decisions is not None  # the default at 100 %: decided without the delegate chain
    else:
        assert ours.static_decisions is None
    for parent in _parents():
        expected = inner.should_sample(parent, 0x1234, "op", attributes={"a": 1})
        got = ours.should_sample(parent, 0x1234, "op", attributes={"a": 1})
        if expected.decision is sampling.Decision.DROP:
            assert got.decision is sampling.Decision.RECORD_ONLY
            assert dict(got.attributes) == {}
        else:
            assert got.decision is expected.decision
            assert dict(got.attributes) == dict(expected.attributes)
        assert got.trace_state == expected.trace_state


def test_a_second_init_can_switch_the_sampler() -> None:
    ours = SwitchableSampler(build_sampler("parentbased_traceidratio", 1.0))
    ours.inner = build_sampler("always_off", 1.0)
    assert ours.static_decisions is None
    assert ours.should_sample(None, 1, "op").decision is sampling.Decision.RECORD_ONLY
    assert "AlwaysOffSampler" in ours.get_description()
