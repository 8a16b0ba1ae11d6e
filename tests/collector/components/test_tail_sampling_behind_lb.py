"""Tail sampling behind the trace-id load balancer: each trace decided in one place (issue 14 item 4).

Two agents, two gateways running ``tail_sampling`` (keep traces with an error, drop the
rest). Every trace is sent in two halves, one through each agent, and the error, when there
is one, is only in the second half. Behind the ``loadbalancing`` exporter both halves of a
trace reach the same gateway, so every error trace is kept whole and every fine trace is
dropped whole. The positive control sends the same halves with each agent exporting to
"its own" gateway (what a plain ``otlp`` exporter per agent, or a round-robin balancer,
does): the gateway that sees only the first half never sees the error and drops it, so
error traces arrive with half their spans, which the same check catches.
"""

from __future__ import annotations

import os
import time
from typing import Any

import grpc
import pytest

from meshwatch.collector.otlp_sink import OtlpSink, otlp_sink
from meshwatch.stack.testing import eventually

from ..core._helpers import sink_exporter
from ._otlp import span, traces
from .test_loadbalancing import EXPORT, balancer

pytestmark = pytest.mark.integration

HALF = 4
TRACES = 60


def gateway(sink: OtlpSink) -> dict[str, Any]:
    return {
        "processors": {
            "tail_sampling": {
                "decision_wait": "2s",
                "policies": [{"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}],
            }
        },
        "exporters": {"otlphttp/sink": sink_exporter(sink)},
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["tail_sampling"], "exporters": ["otlphttp/sink"]}
            }
        },
    }


def direct(endpoint: str) -> dict[str, Any]:
    """An agent that sends everything to one gateway (the control: no trace-id routing)."""
    return {
        "exporters": {"otlp": {"endpoint": endpoint, "tls": {"insecure": True}}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp"]}}},
    }


def send_halves(agents: list[str]) -> tuple[set[str], set[str]]:
    """``TRACES`` traces, each as two requests through the two agents; (error trace ids, fine trace ids)."""
    errors, fine = set(), set()
    channels = [grpc.insecure_channel(a) for a in agents]
    exports = [c.unary_unary(EXPORT) for c in channels]
    try:
        for index in range(TRACES):
            trace_id = os.urandom(16)
            failed = index % 2 == 0
            (errors if failed else fine).add(trace_id.hex())
            for half, export in enumerate(exports):
                spans = [
                    span(f"op-{half}-{i}", trace_id=trace_id, error=failed and half == 1 and i == 0)
                    for i in range(HALF)
                ]
                export(traces({"service.name": f"svc-{half}"}, spans).SerializeToString(), timeout=10)
    finally:
        for channel in channels:
            channel.close()
    return errors, fine


def spans_by_trace(sinks: list[OtlpSink]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sink in sinks:
        with sink.lock:
            for s in sink.spans:
                counts[s.trace_id] = counts.get(s.trace_id, 0) + 1
    return counts


def outcome(sinks: list[OtlpSink], errors: set[str], fine: set[str]) -> dict[str, int]:
    counts = spans_by_trace(sinks)
    return {
        "error_traces_whole": sum(1 for t in errors if counts.get(t, 0) == 2 * HALF),
        "error_traces_partial": sum(1 for t in errors if 0 < counts.get(t, 0) < 2 * HALF),
        "error_traces_missing": sum(1 for t in errors if t not in counts),
        "fine_traces_kept": sum(1 for t in fine if t in counts),
    }


def _run(collector_factory: Any, *, routed: bool) -> dict[str, int]:
    with otlp_sink() as s0, otlp_sink() as s1:
        gateways = [collector_factory(gateway(s), name=f"gateway-{i}") for i, s in enumerate((s0, s1))]
        endpoints = [g.grpc_endpoint for g in gateways]
        configs = [balancer(endpoints) for _ in range(2)] if routed else [direct(e) for e in endpoints]
        agents = [collector_factory(c, name=f"agent-{i}") for i, c in enumerate(configs)]
        errors, fine = send_halves([a.grpc_endpoint for a in agents])
        # decisions come decision_wait (2 s) after each trace's first span; wait for every error trace's spans
        eventually(
            lambda: sum(1 for t in errors if t in spans_by_trace([s0, s1])) == len(errors),
            timeout=60,
            what="a decision for every error trace",
        )
        time.sleep(4)  # the second half of a split trace, if any, is decided (and dropped) by now
        return outcome([s0, s1], errors, fine)


def test_behind_the_load_balancer_every_error_trace_is_kept_whole_and_every_fine_trace_dropped(
    collector_factory: Any,
) -> None:
    result = _run(collector_factory, routed=True)
    print(f"\nbehind loadbalancing: {result}")
    assert result == {
        "error_traces_whole": TRACES // 2,
        "error_traces_partial": 0,
        "error_traces_missing": 0,
        "fine_traces_kept": 0,
    }


def test_control_without_trace_id_routing_error_traces_lose_the_half_that_had_no_error(
    collector_factory: Any,
) -> None:
    result = _run(collector_factory, routed=False)
    print(f"\nwithout routing: {result}")
    assert result["error_traces_partial"] == TRACES // 2, result
