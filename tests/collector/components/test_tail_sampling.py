"""Unit tests of the ``tail_sampling`` processor: each policy and combinator, the decision flow,
late spans, the memory bound in both modes, early decision, and a decision loop that keeps up.

The processor gets a fake clock, so "30 s later" is one assignment; its timer thread runs
(as in production) but only ever sees the fake time.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from pydantic import ValidationError

from meshwatch.collector.component import Refused
from meshwatch.collector.processors import tail_sampling
from meshwatch.collector.processors._tail_policies import (
    DROPPED,
    NOT_SAMPLED,
    SAMPLED,
    TraceView,
    build_policies,
    fnv1a64,
    parse_trace_state,
    probabilistic_threshold,
)
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry

from ._otlp import Sink, batch_of, metric, settings, span, traces

MS = 1_000_000


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _config(policies: list[dict[str, Any]], **extra: Any) -> tail_sampling.TailSamplingConfig:
    return tail_sampling.factory.config_model.model_validate({"policies": policies, **extra})


def _view(*requests: Any) -> TraceView:
    """A trace made of the resource entries of ``requests`` (one per arrival), as the processor sees it."""
    wire = b"".join(r.SerializeToString() for r in requests)
    spans = [s for r in requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return TraceView(spans[0].trace_id if spans else os.urandom(16), len(spans), len(wire), wire)


def _decide(policy: dict[str, Any], *requests: Any, clock: Clock | None = None) -> Any:
    (built,) = build_policies(_config([{"name": "p", **policy}]).policies, clock or Clock())
    return built.evaluator.evaluate(_view(*requests))


def _trace(n: int = 1, *, trace_id: bytes | None = None, resource: dict | None = None, **span_args: Any) -> Any:
    tid = trace_id or os.urandom(16)
    return traces(resource or {"service.name": "checkout"}, [span(trace_id=tid, **span_args) for _ in range(n)])


# --- leaf policies -------------------------------------------------------------------------------


def test_always_sample() -> None:
    assert _decide({"type": "always_sample"}, _trace()) is SAMPLED


def test_latency_spans_earliest_start_to_latest_end() -> None:
    tid, t0 = os.urandom(16), 10**18
    request = traces(
        {"service.name": "a"},
        [
            span(trace_id=tid, start=t0, duration=0.1),
            span(trace_id=tid, start=t0 + 400 * MS, duration=0.2),  # ends at 600 ms
        ],
    )
    assert _decide({"type": "latency", "latency": {"threshold_ms": 599}}, request) is SAMPLED
    assert _decide({"type": "latency", "latency": {"threshold_ms": 600}}, request) is NOT_SAMPLED  # strictly greater
    window = {"type": "latency", "latency": {"threshold_ms": 100, "upper_threshold_ms": 600}}
    assert _decide(window, request) is SAMPLED
    assert (
        _decide({"type": "latency", "latency": {"threshold_ms": 100, "upper_threshold_ms": 500}}, request)
        is NOT_SAMPLED
    )


def test_latency_from_ingest_bounds_agrees_with_the_walk() -> None:
    """The processor hands ``latency`` the time range it saw at ingest; it must answer as the walk does."""
    import random

    rng = random.Random(7)
    policy = build_policies(
        _config([{"name": "l", "type": "latency", "latency": {"threshold_ms": 300}}]).policies, Clock()
    )
    evaluate = policy[0].evaluator.evaluate
    for _ in range(300):
        tid, t0 = os.urandom(16), 10**18
        spans = [
            span(trace_id=tid, start=t0 + rng.randrange(0, 400) * MS, duration=rng.randrange(1, 200) / 1000)
            for _ in range(rng.randrange(1, 6))
        ]
        view = _view(traces({"service.name": "a"}, spans))
        bounded = TraceView(
            view.trace_id,
            view.span_count,
            view.nbytes,
            view.wire,
            (min(s.start_time_unix_nano for s in spans), max(s.end_time_unix_nano for s in spans)),
        )
        assert evaluate(bounded) is evaluate(view)


def test_a_trace_split_over_batches_is_timed_end_to_end(host, telemetry, clock) -> None:
    sink = Sink()
    proc = _processor(
        host,
        telemetry,
        clock,
        [{"name": "slow", "type": "latency", "latency": {"threshold_ms": 500}}],
        sink,
        decision_wait="5s",
    )
    try:
        tid, t0 = os.urandom(16), 10**18
        proc.consume(
            batch_of(Signal.TRACES, traces({"service.name": "a"}, [span(trace_id=tid, start=t0, duration=0.3)]))
        )
        proc.consume(
            batch_of(
                Signal.TRACES, traces({"service.name": "b"}, [span(trace_id=tid, start=t0 + 400 * MS, duration=0.2)])
            )
        )
        clock.now += 6
        proc.service()
        assert _kept(sink) == {tid: 2}  # 600 ms from the first start to the last end
    finally:
        proc.shutdown(5)


def test_status_code() -> None:
    ok, failed = _trace(3), _trace(3, error=True)
    policy = {"type": "status_code", "status_code": {"status_codes": ["ERROR"]}}
    assert _decide(policy, failed) is SAMPLED
    assert _decide(policy, ok) is NOT_SAMPLED
    assert _decide({"type": "status_code", "status_code": {"status_codes": ["UNSET"]}}, ok) is SAMPLED


def test_string_attribute_exact_regex_invert_and_resource() -> None:
    exact = {"type": "string_attribute", "string_attribute": {"key": "http.route", "values": ["/pay", "/cart"]}}
    assert _decide(exact, _trace(attributes={"http.route": "/pay"})) is SAMPLED
    assert _decide(exact, _trace(attributes={"http.route": "/pay/x"})) is NOT_SAMPLED
    assert _decide(exact, _trace(attributes={"other": "/pay"})) is NOT_SAMPLED
    assert _decide(exact, _trace(attributes={"http.route": 7})) is NOT_SAMPLED  # not a string: reads as ""
    on_resource = {"type": "string_attribute", "string_attribute": {"key": "service.name", "values": ["checkout"]}}
    assert _decide(on_resource, _trace()) is SAMPLED
    regex = {
        "type": "string_attribute",
        "string_attribute": {"key": "http.route", "values": ["^/v1/"], "enabled_regex_matching": True},
    }
    assert _decide(regex, _trace(attributes={"http.route": "/v1/users/3"})) is SAMPLED
    assert _decide(regex, _trace(attributes={"http.route": "/v2/users/3"})) is NOT_SAMPLED
    invert = {
        "type": "string_attribute",
        "string_attribute": {"key": "http.route", "values": ["/health"], "invert_match": True},
    }
    assert _decide(invert, _trace(attributes={"http.route": "/health"})) is NOT_SAMPLED
    assert _decide(invert, _trace(attributes={"http.route": "/pay"})) is SAMPLED
    assert _decide(invert, _trace()) is SAMPLED  # key absent: inverted match samples, as in Go


def test_numeric_attribute_bounds_where_zero_means_unbounded() -> None:
    def policy(**cfg: Any) -> dict[str, Any]:
        return {"type": "numeric_attribute", "numeric_attribute": {"key": "http.status_code", **cfg}}

    assert _decide(policy(min_value=500, max_value=599), _trace(attributes={"http.status_code": 503})) is SAMPLED
    assert _decide(policy(min_value=500, max_value=599), _trace(attributes={"http.status_code": 404})) is NOT_SAMPLED
    assert _decide(policy(min_value=500), _trace(attributes={"http.status_code": 10**12})) is SAMPLED
    assert _decide(policy(max_value=10), _trace(attributes={"http.status_code": -5})) is SAMPLED
    # a double reads as 0 (pcommon Value.Int()), which is within [-inf, 10]
    assert _decide(policy(max_value=10), _trace(attributes={"http.status_code": 503.0})) is SAMPLED
    assert (
        _decide(policy(min_value=500, invert_match=True), _trace(attributes={"http.status_code": 503})) is NOT_SAMPLED
    )
    with pytest.raises(ValidationError, match="min_value and/or max_value"):
        _config([{"name": "p", **policy()}])


def test_boolean_attribute() -> None:
    policy = {"type": "boolean_attribute", "boolean_attribute": {"key": "app.force_sample", "value": True}}
    assert _decide(policy, _trace(attributes={"app.force_sample": True})) is SAMPLED
    assert _decide(policy, _trace(attributes={"app.force_sample": False})) is NOT_SAMPLED
    assert _decide(policy, _trace(attributes={"app.force_sample": "true"})) is NOT_SAMPLED  # a string is not a bool
    inverted = {
        "type": "boolean_attribute",
        "boolean_attribute": {"key": "app.force_sample", "value": True, "invert_match": True},
    }
    assert _decide(inverted, _trace(attributes={"app.force_sample": True})) is NOT_SAMPLED


def test_probabilistic_uses_the_go_hash_and_threshold() -> None:
    # FNV-1a 64 test vectors, and thresholds printed by Go's big.Float code for these percentages.
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8
    go = {0.1: 18446744073709551, 5: 922337203685477631, 12.5: 2305843009213693951, 33.333: 6148853202089604095}
    for percentage, threshold in go.items():
        assert probabilistic_threshold(percentage) == threshold
    assert probabilistic_threshold(100) == probabilistic_threshold(150) == 2**64 - 1
    policy = {"type": "probabilistic", "probabilistic": {"sampling_percentage": 25, "hash_salt": "s"}}
    (built,) = build_policies(_config([{"name": "p", **policy}]).policies, Clock())
    ids = [os.urandom(16) for _ in range(4000)]
    kept = [tid for tid in ids if built.evaluator.evaluate(TraceView(tid, 1, 100, b"")) is SAMPLED]
    assert 850 < len(kept) < 1150
    salt = fnv1a64(b"s")
    assert all(fnv1a64(tid, salt) <= probabilistic_threshold(25) for tid in kept)
    assert _decide({**policy, "probabilistic": {"sampling_percentage": 0}}, _trace()) is NOT_SAMPLED


def test_rate_limiting_is_a_token_bucket_starting_full() -> None:
    clock = Clock()
    (built,) = build_policies(
        _config([{"name": "r", "type": "rate_limiting", "rate_limiting": {"spans_per_second": 10}}]).policies, clock
    )
    five = _view(_trace(5))
    assert [built.evaluator.evaluate(five) for _ in range(5)] == [SAMPLED] * 4 + [NOT_SAMPLED]  # burst 20
    clock.now += 0.5  # 5 tokens back
    assert built.evaluator.evaluate(five) is SAMPLED
    assert built.evaluator.evaluate(five) is NOT_SAMPLED
    assert built.evaluator.evaluate(_view(_trace(21))) is NOT_SAMPLED  # more than the burst never passes


def test_span_count() -> None:
    policy = {"type": "span_count", "span_count": {"min_spans": 2, "max_spans": 3}}
    assert [_decide(policy, _trace(n)) for n in (1, 2, 3, 4)] == [NOT_SAMPLED, SAMPLED, SAMPLED, NOT_SAMPLED]
    assert _decide({"type": "span_count", "span_count": {"min_spans": 2}}, _trace(50)) is SAMPLED


def test_trace_state() -> None:
    policy = {"type": "trace_state", "trace_state": {"key": "tenant", "values": ["gold"]}}
    request = _trace()
    request.resource_spans[0].scope_spans[0].spans[0].trace_state = "vendor=x, tenant=gold"
    assert _decide(policy, request) is SAMPLED
    request.resource_spans[0].scope_spans[0].spans[0].trace_state = "tenant=silver"
    assert _decide(policy, request) is NOT_SAMPLED
    request.resource_spans[0].scope_spans[0].spans[0].trace_state = "tenant=gold,Bad Key=1"  # malformed: no match
    assert _decide(policy, request) is NOT_SAMPLED
    assert parse_trace_state("a=1,b=2") == {"a": "1", "b": "2"}
    assert parse_trace_state("a=1,a=2") is None


# --- combinators -------------------------------------------------------------------------------

ERRORS = {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}
PAY = {"name": "pay", "type": "string_attribute", "string_attribute": {"key": "http.route", "values": ["/pay"]}}


def test_and_needs_every_sub_policy() -> None:
    policy = {"type": "and", "and": {"and_sub_policy": [ERRORS, PAY]}}
    assert _decide(policy, _trace(error=True, attributes={"http.route": "/pay"})) is SAMPLED
    assert _decide(policy, _trace(error=True, attributes={"http.route": "/cart"})) is NOT_SAMPLED
    assert _decide(policy, _trace(attributes={"http.route": "/pay"})) is NOT_SAMPLED


def test_not_inverts_and_nests_in_and() -> None:
    assert _decide({"type": "not", "not": {"not_sub_policy": ERRORS}}, _trace()) is SAMPLED
    assert _decide({"type": "not", "not": {"not_sub_policy": ERRORS}}, _trace(error=True)) is NOT_SAMPLED
    not_pay = {"name": "n", "type": "not", "not": {"not_sub_policy": PAY}}
    policy = {"type": "and", "and": {"and_sub_policy": [ERRORS, not_pay]}}
    assert _decide(policy, _trace(error=True, attributes={"http.route": "/cart"})) is SAMPLED
    assert _decide(policy, _trace(error=True, attributes={"http.route": "/pay"})) is NOT_SAMPLED


def test_drop_drops_only_when_every_sub_policy_matches() -> None:
    policy = {"type": "drop", "drop": {"drop_sub_policy": [PAY]}}
    assert _decide(policy, _trace(attributes={"http.route": "/pay"})) is DROPPED
    assert _decide(policy, _trace(attributes={"http.route": "/cart"})) is NOT_SAMPLED


def test_composite_shares_a_span_rate_between_its_sub_policies() -> None:
    clock = Clock()
    composite = {
        "name": "c",
        "type": "composite",
        "composite": {
            "max_total_spans_per_second": 10,
            "composite_sub_policy": [ERRORS, {"name": "rest", "type": "always_sample"}],
            "rate_allocation": [{"policy": "errors", "percent": 60}],
        },
    }
    (built,) = build_policies(_config([composite]).policies, clock)
    evaluate = built.evaluator.evaluate
    errors, ok = _view(_trace(3, error=True)), _view(_trace(3))
    assert [evaluate(errors), evaluate(errors), evaluate(errors)] == [SAMPLED, SAMPLED, NOT_SAMPLED]  # 6 of 6
    assert [evaluate(ok), evaluate(ok)] == [SAMPLED, NOT_SAMPLED]  # "rest" gets the equal share, 5
    clock.now += 1
    assert evaluate(errors) is SAMPLED  # a new second


# --- the processor -------------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _processor(
    host: Any, telemetry: Telemetry, clock: Clock, policies: list[dict[str, Any]], sink: Any = None, **extra: Any
) -> Any:
    config = _config(policies, **extra)
    proc = tail_sampling.TailSamplingProcessor(
        settings("tail_sampling", Signal.TRACES, telemetry=telemetry), config, sink or Sink(), clock
    )
    proc.start(host)
    return proc


def _kept(sink: Sink) -> dict[bytes, int]:
    """Spans handed on, per trace id."""
    seen: dict[bytes, int] = {}
    for batch in sink.batches:
        for rs in batch.message.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    seen[s.trace_id] = seen.get(s.trace_id, 0) + 1
    return seen


def _m(telemetry: Telemetry, name: str, **labels: str) -> float:
    return metric(telemetry, f"meshwatch_processor_tail_sampling_{name}", processor="tail_sampling", **labels)


def test_a_trace_is_decided_after_decision_wait_and_handed_on_whole(host, telemetry, clock) -> None:
    sink = Sink()
    proc = _processor(host, telemetry, clock, [ERRORS], sink, decision_wait="10s")
    try:
        failing, fine = os.urandom(16), os.urandom(16)
        proc.consume(
            batch_of(Signal.TRACES, traces({"service.name": "gateway"}, [span(trace_id=failing), span(trace_id=fine)]))
        )
        clock.now += 5
        second = traces({"service.name": "payments"}, [span(trace_id=failing, error=True), span(trace_id=fine)])
        second.resource_spans[0].schema_url = "https://opentelemetry.io/schemas/1.26.0"
        proc.consume(batch_of(Signal.TRACES, second))
        proc.service()
        assert sink.batches == []  # nothing is decided before decision_wait
        clock.now += 5.01
        proc.service()
        assert _kept(sink) == {failing: 2}
        services = [
            rs.resource.attributes[0].value.string_value for b in sink.batches for rs in b.message.resource_spans
        ]
        assert sorted(services) == ["gateway", "payments"]
        assert any(rs.schema_url for b in sink.batches for rs in b.message.resource_spans)
        assert _m(telemetry, "traces_total", decision="sampled", policy="errors") == 1
        assert _m(telemetry, "traces_total", decision="not_sampled", policy="") == 1
        assert (
            metric(
                telemetry,
                "meshwatch_processor_filtered_items_total",
                processor="tail_sampling",
                signal="traces",
                reason="sampled_out",
            )
            == 2
        )
        assert _m(telemetry, "decision_latency_seconds_count", trigger="decision_wait") == 2
        assert (
            _m(
                telemetry,
                "traces_held",
            )
            == 0
        )
    finally:
        proc.shutdown(5)


def test_any_drop_wins_then_any_sample(host, telemetry, clock) -> None:
    sink = Sink()
    health = {
        "name": "health",
        "type": "string_attribute",
        "string_attribute": {"key": "http.route", "values": ["/health"]},
    }
    policies = [
        {"name": "everything", "type": "always_sample"},
        {"name": "no-health", "type": "drop", "drop": {"drop_sub_policy": [health]}},
    ]
    proc = _processor(host, telemetry, clock, policies, sink, decision_wait="1s")
    try:
        probe, order = _trace(attributes={"http.route": "/health"}), _trace(attributes={"http.route": "/pay"})
        proc.consume(batch_of(Signal.TRACES, probe))
        proc.consume(batch_of(Signal.TRACES, order))
        clock.now += 2
        proc.service()
        assert list(_kept(sink)) == [order.resource_spans[0].scope_spans[0].spans[0].trace_id]
        assert _m(telemetry, "traces_total", decision="dropped", policy="no-health") == 1
        # the drop policy is asked first and its verdict ends the vote
        assert _m(telemetry, "policy_decisions_total", policy="everything", decision="sampled") == 1
    finally:
        proc.shutdown(5)


def test_late_spans_follow_the_cached_decision(host, telemetry, clock) -> None:
    sink = Sink()
    proc = _processor(host, telemetry, clock, [ERRORS], sink, decision_wait="1s")
    try:
        kept, dropped = os.urandom(16), os.urandom(16)
        proc.consume(
            batch_of(
                Signal.TRACES, traces({"service.name": "a"}, [span(trace_id=kept, error=True), span(trace_id=dropped)])
            )
        )
        clock.now += 2
        proc.service()
        assert _kept(sink) == {kept: 1}
        # a late OK span of the kept trace is kept; a late ERROR span of the dropped one is not
        proc.consume(
            batch_of(
                Signal.TRACES, traces({"service.name": "b"}, [span(trace_id=kept), span(trace_id=dropped, error=True)])
            )
        )
        proc.service()
        assert _kept(sink) == {kept: 2}
        assert len(proc.store) == 0  # neither started a new trace
        assert _m(telemetry, "late_spans_total", decision="sampled") == 1
        assert _m(telemetry, "late_spans_total", decision="not_sampled") == 1
    finally:
        proc.shutdown(5)


def test_without_a_decision_cache_late_spans_start_over_as_in_go(host, telemetry, clock) -> None:
    sink = Sink()
    cache = {"sampled_cache_size": 0, "non_sampled_cache_size": 0}
    proc = _processor(host, telemetry, clock, [ERRORS], sink, decision_wait="1s", decision_cache=cache)
    try:
        dropped = os.urandom(16)
        proc.consume(batch_of(Signal.TRACES, _trace(trace_id=dropped)))
        clock.now += 2
        proc.service()
        proc.consume(batch_of(Signal.TRACES, _trace(trace_id=dropped, error=True)))
        assert len(proc.store) == 1  # judged again, alone
        clock.now += 2
        proc.service()
        assert _kept(sink) == {dropped: 1}
    finally:
        proc.shutdown(5)


def test_evict_oldest_decides_early_and_counts_when_num_traces_is_reached(host, telemetry, clock) -> None:
    sink = Sink()
    proc = _processor(host, telemetry, clock, [ERRORS], sink, decision_wait="30s", num_traces=100)
    try:
        failing = [os.urandom(16) for _ in range(20)]
        proc.consume(
            batch_of(Signal.TRACES, traces({"service.name": "a"}, [span(trace_id=t, error=True) for t in failing]))
        )
        for _ in range(18):  # 2x the bound: 200 traces
            clock.now += 0.01
            proc.consume(batch_of(Signal.TRACES, traces({"service.name": "a"}, [span() for _ in range(10)])))
        assert len(proc.store) == 100
        assert _m(telemetry, "evicted_traces_total", reason="num_traces") == 100
        proc.service()
        assert set(_kept(sink)) == set(failing)  # evicted, yet decided on what they had: errors kept
        assert _m(telemetry, "decision_latency_seconds_count", trigger="evicted") == 100
    finally:
        proc.shutdown(5)


def test_evict_oldest_keeps_held_bytes_under_memory_limit(host, telemetry, clock) -> None:
    proc = _processor(host, telemetry, clock, [ERRORS], decision_wait="30s", memory_limit_mib=0.25)
    try:
        filler = {"payload": "x" * 500}
        for _ in range(200):  # ≈ 2 × 256 KiB of spans
            proc.consume(
                batch_of(Signal.TRACES, traces({"service.name": "a"}, [span(attributes=filler) for _ in range(3)]))
            )
            assert proc.held_bytes() <= 256 * 1024
        assert _m(telemetry, "evicted_traces_total", reason="memory") > 80
        assert telemetry.held_bytes()["tail_sampling"] == proc.held_bytes() > 200 * 1024
    finally:
        proc.shutdown(5)


def test_refuse_mode_pushes_back_until_decisions_free_room(host, telemetry, clock) -> None:
    sink = Sink()
    proc = _processor(
        host,
        telemetry,
        clock,
        [{"name": "all", "type": "always_sample"}],
        sink,
        decision_wait="5s",
        num_traces=50,
        when_full="refuse",
    )
    try:
        refusals = []
        for _ in range(10):  # 2x the bound
            request = traces({"service.name": "a"}, [span() for _ in range(10)])
            try:
                proc.consume(batch_of(Signal.TRACES, request))
            except Refused as exc:
                refusals.append((exc.reason, exc.retryable))
        assert refusals == [("tail_sampling_full", True)] * 5
        assert len(proc.store) == 50  # a refused batch left nothing behind
        assert _m(telemetry, "evicted_traces_total", reason="num_traces") == 0
        clock.now += 6
        proc.service()
        proc.consume(batch_of(Signal.TRACES, traces({"service.name": "a"}, [span() for _ in range(10)])))  # room again
        assert len(_kept(sink)) == 50
    finally:
        proc.shutdown(5)


def test_refuse_mode_counts_bytes_too(host, telemetry, clock) -> None:
    proc = _processor(
        host, telemetry, clock, [ERRORS], decision_wait="30s", memory_limit_mib=0.05, block_on_overflow=True
    )
    try:
        filler = {"payload": "x" * 1000}
        refused = 0
        for _ in range(100):  # ≈ 100 KiB of spans, 2x the bound
            try:
                proc.consume(batch_of(Signal.TRACES, traces({"service.name": "a"}, [span(attributes=filler)])))
            except Refused:
                refused += 1
        assert refused > 40
        assert 0.04 * 2**20 < proc.held_bytes() <= 0.05 * 2**20
    finally:
        proc.shutdown(5)


def test_early_decision_after_the_root_and_a_quiet_period(host, telemetry, clock) -> None:
    sink = Sink()
    proc = _processor(
        host,
        telemetry,
        clock,
        [{"name": "all", "type": "always_sample"}],
        sink,
        decision_wait="30s",
        decision_wait_after_root_received="1s",
    )
    try:
        with_root, without_root = os.urandom(16), os.urandom(16)
        root_id = os.urandom(8)
        proc.consume(
            batch_of(
                Signal.TRACES,
                traces(
                    {"service.name": "a"},
                    [span(trace_id=with_root, parent=root_id), span(trace_id=without_root, parent=root_id)],
                ),
            )
        )
        proc.consume(
            batch_of(Signal.TRACES, traces({"service.name": "a"}, [span(trace_id=with_root, span_id=root_id)]))
        )  # the root
        clock.now += 0.6
        proc.consume(
            batch_of(Signal.TRACES, traces({"service.name": "b"}, [span(trace_id=with_root, parent=root_id)]))
        )  # restarts the quiet period
        clock.now += 0.6
        proc.service()
        assert sink.batches == []
        clock.now += 0.5
        proc.service()
        assert _kept(sink) == {with_root: 3}  # decided 1.7 s in instead of 30 s
        assert _m(telemetry, "decision_latency_seconds_count", trigger="early") == 1
        assert len(proc.store) == 1  # no root: waits for decision_wait
    finally:
        proc.shutdown(5)


def test_a_refusing_next_consumer_loses_nothing(host, telemetry, clock) -> None:
    class Flaky(Sink):
        refuse = True

        def consume(self, batch: Any) -> None:
            if self.refuse:
                raise Refused("queue_full", "full", retryable=True, retry_after=0.5)
            super().consume(batch)

    sink = Flaky()
    proc = _processor(host, telemetry, clock, [{"name": "all", "type": "always_sample"}], sink, decision_wait="1s")
    try:
        proc.consume(batch_of(Signal.TRACES, _trace(4)))
        clock.now += 2
        proc.service()
        assert sink.batches == [] and proc.held_bytes() > 0
        sink.refuse = False
        clock.now += 1
        proc.service()
        assert sum(_kept(sink).values()) == 4
        assert proc.held_bytes() == 0
    finally:
        proc.shutdown(5)


def test_shutdown_decides_what_is_pending(host, telemetry, clock) -> None:
    sink = Sink()
    proc = _processor(host, telemetry, clock, [ERRORS], sink, decision_wait="30s")
    proc.consume(batch_of(Signal.TRACES, _trace(2, error=True)))
    proc.shutdown(5)
    assert sum(_kept(sink).values()) == 2
    assert "tail_sampling" not in telemetry.held_bytes()


def test_decisions_keep_pace_with_ingest_from_many_threads(host, telemetry) -> None:
    """Real clock: four threads send as fast as they can; every trace is decided close to when it is due."""
    sink = Sink()
    config = _config([ERRORS], decision_wait="0.3s")
    proc = tail_sampling.TailSamplingProcessor(
        settings("tail_sampling", Signal.TRACES, telemetry=telemetry), config, sink
    )
    proc.start(host)
    stop = time.monotonic() + 3.0
    sent = [0] * 4

    def send(index: int) -> None:
        while time.monotonic() < stop:
            proc.consume(batch_of(Signal.TRACES, traces({"service.name": "a"}, [span(error=True) for _ in range(20)])))
            sent[index] += 20

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        held_at_end = len(proc.store)
        # One collection for both samples: the decision timer still runs, and two reads race it.
        lag = {
            (sample.name, sample.labels.get("le")): sample.value
            for family in telemetry.registry.collect()
            for sample in family.samples
            if sample.name.startswith("meshwatch_processor_tail_sampling_decision_lag_seconds")
        }
        lag_count = lag[("meshwatch_processor_tail_sampling_decision_lag_seconds_count", None)]
        lag_slow = lag_count - lag[("meshwatch_processor_tail_sampling_decision_lag_seconds_bucket", "1.0")]
        assert lag_count > 0 and lag_slow == 0  # no trace waited a second past its due time
        rate = sum(sent) / 3.0  # traces per second (one span each)
        assert held_at_end <= rate * (0.3 + 1.0) + 200  # at most decision_wait plus the lag bound of traces
    finally:
        proc.shutdown(10)
    assert sum(_kept(sink).values()) == sum(sent)


# --- configuration ------------------------------------------------------------------------------


def test_a_go_config_loads_with_the_same_tree() -> None:
    config = _config(
        [
            {"name": "p1", "type": "always_sample"},
            {"name": "p2", "type": "latency", "latency": {"threshold_ms": 5000, "upper_threshold_ms": 10000}},
            {
                "name": "p3",
                "type": "numeric_attribute",
                "numeric_attribute": {"key": "key1", "min_value": 50, "max_value": 100},
            },
            {"name": "p4", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10}},
            {"name": "p5", "type": "status_code", "status_code": {"status_codes": ["ERROR", "UNSET"]}},
            {
                "name": "p6",
                "type": "string_attribute",
                "string_attribute": {
                    "key": "key2",
                    "values": ["value1", "val*"],
                    "enabled_regex_matching": True,
                    "cache_max_size": 10,
                },
            },
            {"name": "p7", "type": "rate_limiting", "rate_limiting": {"spans_per_second": 35, "burst_capacity": 70}},
            {"name": "p8", "type": "span_count", "span_count": {"min_spans": 2, "max_spans": 20}},
            {"name": "p9", "type": "trace_state", "trace_state": {"key": "key3", "values": ["value1", "value2"]}},
            {"name": "p10", "type": "boolean_attribute", "boolean_attribute": {"key": "key4", "value": True}},
            {
                "name": "and-1",
                "type": "and",
                "and": {
                    "and_sub_policy": [
                        {
                            "name": "a",
                            "type": "numeric_attribute",
                            "numeric_attribute": {"key": "key1", "min_value": 50},
                        },
                        {
                            "name": "n",
                            "type": "not",
                            "not": {
                                "not_sub_policy": {"name": "l", "type": "latency", "latency": {"threshold_ms": 1000}}
                            },
                        },
                    ]
                },
            },
            {
                "name": "not-1",
                "type": "not",
                "not": {"not_sub_policy": {"name": "l", "type": "latency", "latency": {"threshold_ms": 1000}}},
            },
            {
                "name": "drop-1",
                "type": "drop",
                "drop": {
                    "drop_sub_policy": [
                        {
                            "name": "d",
                            "type": "string_attribute",
                            "string_attribute": {
                                "key": "url.path",
                                "values": ["/health"],
                                "enabled_regex_matching": True,
                            },
                        }
                    ]
                },
            },
            {
                "name": "composite-1",
                "type": "composite",
                "composite": {
                    "max_total_spans_per_second": 1000,
                    "policy_order": ["c1", "c2"],
                    "composite_sub_policy": [
                        {
                            "name": "c1",
                            "type": "numeric_attribute",
                            "numeric_attribute": {"key": "key1", "min_value": 50},
                        },
                        {"name": "c2", "type": "always_sample"},
                    ],
                    "rate_allocation": [{"policy": "c1", "percent": 50}],
                },
            },
        ],
        decision_wait="10s",
        num_traces=100,
        expected_new_traces_per_sec=10,
        decision_cache={"sampled_cache_size": 100_000, "non_sampled_cache_size": 100_000},
    )
    policies = build_policies(config.policies, Clock())
    assert policies[0].name == "drop-1" and len(policies) == 14
    assert config.when_full == "evict_oldest"


@pytest.mark.parametrize(
    ("policies", "message"),
    [
        ([{"name": "x", "type": "ottl_condition"}], "ottl_condition"),
        ([{"name": "x", "type": "status_code"}], "at least one"),
        ([{"name": "x", "type": "always_sample"}, {"name": "x", "type": "always_sample"}], "duplicate"),
        ([{"type": "always_sample"}], "name cannot be empty"),
        ([{"name": "x", "type": "and"}], "needs a `and:` section"),
        ([{"name": "x", "type": "drop", "drop": {"drop_sub_policy": [{"name": "y", "type": "drop"}]}}], "drop"),
        (
            [
                {
                    "name": "x",
                    "type": "string_attribute",
                    "string_attribute": {"key": "k", "values": ["("], "enabled_regex_matching": True},
                }
            ],
            "invalid regex",
        ),
    ],
)
def test_bad_configs_are_refused_with_the_key(policies: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _config(policies)


def test_block_on_overflow_means_refuse_and_cannot_contradict_when_full() -> None:
    assert _config([ERRORS], block_on_overflow=True).when_full == "refuse"
    with pytest.raises(ValidationError, match="contradicts"):
        _config([ERRORS], block_on_overflow=True, when_full="evict_oldest")
