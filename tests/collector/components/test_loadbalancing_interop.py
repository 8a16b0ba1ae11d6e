"""meshwatch collectors as the backends of contrib's Go loadbalancing exporter (v0.161.0).

The Go collector (``meshwatch-stack install otelcol-tailsampling``: the v0.161.0 reference
build) takes OTLP/gRPC and balances by trace id over two meshwatch collectors (static
resolver); each backend exports to its own ``otlp_sink``, which keeps every copy. Every trace
must land on exactly one backend, whole, with nothing lost or doubled.

Then one backend is SIGKILLed. What the Go side does is contrib's documented behaviour, noted
here and asserted only where it is stable: with the static resolver it keeps the dead backend
in its ring and does not re-route, so the survivor still gets its own traces whole, and the dead
one's are held in the Go sub-exporter's in-memory queue and retried; after the meshwatch
backend is restarted on its port they arrive. The rings of the two balancers are different
(contrib: CRC32; meshwatch: BLAKE2b), which the placement check shows too.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshwatch.collector.exporters._loadbalancing.ring import HashRing
from meshwatch.collector.otlp_sink import OtlpSink, otlp_sink
from meshwatch.collector.testing import free_port
from meshwatch.stack import BackendMissing, binary
from meshwatch.stack.testing import eventually

from ._lb import count_across, traces_on_several
from ._otlp import span, traces
from .test_kafka_interop import otelcol
from .test_loadbalancing import send, two_backends, wait_all
from .test_loadbalancing_ring import CONTRIB_STYLE

pytestmark = pytest.mark.integration

SPANS_PER_TRACE = 4


def go_balancer(receiver: str, hostnames: list[str]) -> dict[str, Any]:
    """Contrib's exporter by trace id over ``hostnames``; the sub-exporters' queue and retry are
    its defaults (in memory, on) with short intervals written out, so a restarted backend is
    retried within seconds."""
    return {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": receiver}}}},
        "exporters": {
            "load_balancing": {
                "routing_key": "traceID",
                "protocol": {
                    "otlp": {
                        "tls": {"insecure": True},
                        "timeout": "3s",
                        "sending_queue": {"enabled": True},
                        "retry_on_failure": {
                            "enabled": True,
                            "initial_interval": "200ms",
                            "max_interval": "1s",
                            "max_elapsed_time": "180s",
                        },
                    }
                },
                "resolver": {"static": {"hostnames": hostnames}},
            }
        },
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["load_balancing"]}}},
    }


def requests_for(trace_ids: list[bytes]) -> list[bytes]:
    """Each trace's spans in two requests, each request holding spans of 50 traces."""
    requests = []
    for part in range(2):
        for start in range(0, len(trace_ids), 50):
            spans = [
                span(f"op-{part}-{i}", trace_id=t, span_id=os.urandom(8))
                for t in trace_ids[start : start + 50]
                for i in range(SPANS_PER_TRACE // 2)
            ]
            requests.append(traces({"service.name": "shop"}, spans).SerializeToString())
    return requests


def placed(sinks: list[OtlpSink], trace_ids: list[bytes]) -> dict[bytes, int]:
    """The sink index each trace reached (the first, if several)."""
    where: dict[bytes, int] = {}
    for index, sink in enumerate(sinks):
        with sink.lock:
            ids = {s.trace_id for s in sink.spans}
        for trace_id in trace_ids:
            if trace_id.hex() in ids:
                where.setdefault(trace_id, index)
    return where


def test_meshwatch_backends_behind_the_go_loadbalancing_exporter(collector_factory: Any, tmp_path: Path) -> None:
    with otlp_sink() as s0, otlp_sink() as s1:
        sinks = [s0, s1]
        backends = two_backends(collector_factory, sinks)
        endpoints = [b.grpc_endpoint for b in backends]
        receiver = f"127.0.0.1:{free_port()}"
        with otelcol(go_balancer(receiver, endpoints), tmp_path / "go-lb", component="otelcol-tailsampling"):
            eventually(lambda: send(receiver, [b""]) is None, timeout=30, what="the Go receiver (an empty request)")

            # Every trace on exactly one backend, whole; nothing lost, nothing doubled.
            first = [os.urandom(16) for _ in range(300)]
            send(receiver, requests_for(first))
            counts = wait_all(sinks, first, SPANS_PER_TRACE)
            assert counts["missing_spans"] == 0 and counts["duplicate_spans"] == 0, counts
            assert traces_on_several(sinks) == set()
            where = placed(sinks, first)
            shares = [sum(1 for i in where.values() if i == n) for n in (0, 1)]
            assert min(shares) > 75, shares  # ~150 each: both backends take part
            # Not meshwatch's ring: its owner for the same endpoints agrees only by chance (~1/2).
            ours = HashRing(endpoints)
            agree = sum(1 for t, i in where.items() if ours.owner(t) == endpoints[i]) / len(where)
            print(f"\ntraces per backend {shares}; meshwatch's ring agrees with Go's on {agree:.0%} of them")
            assert agree < 0.8

            # A backend SIGKILLed: the survivor still gets its traces whole (no re-routing,
            # so a trace is not split), the victim's wait in the Go sub-exporter's queue.
            backends[1].kill()
            second = [os.urandom(16) for _ in range(200)]
            send(receiver, requests_for(second))
            eventually(
                lambda: count_across([s0], second, SPANS_PER_TRACE)["arrived_spans"] > 0,
                timeout=30,
                what="the survivor's share while the other backend is down",
            )
            wait_all([s0], second, SPANS_PER_TRACE, timeout=8)  # never complete here: 8 s to settle
            during = placed([s0], second)
            with s0.lock:
                per_trace = {t: sum(1 for s in s0.spans if s.trace_id == t.hex()) for t in during}
            partial = {t.hex(): n for t, n in per_trace.items() if n != SPANS_PER_TRACE}
            assert partial == {}, f"traces split while a backend was down: {partial}"
            print(f"with backend 1 killed: {len(during)} of {len(second)} new traces reached the survivor")

            # The meshwatch backend restarted on its port: the Go side's retries deliver the rest.
            backends[1].restart()
            counts = wait_all(sinks, second, SPANS_PER_TRACE, timeout=120)
            print(f"after the restart: {counts}; traces on both backends: {len(traces_on_several(sinks))}")
            assert counts["missing_spans"] == 0, counts
            assert traces_on_several(sinks) == set()


def go_validate(exporter: dict[str, Any], workdir: Path) -> subprocess.CompletedProcess[str]:
    """``otelcol validate`` of a traces pipeline into ``exporter`` (checks keys, starts nothing)."""
    try:
        program = binary("otelcol-tailsampling")
    except BackendMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {}}}},
        "exporters": {"load_balancing": exporter},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["load_balancing"]}}},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "validate.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([str(program), "validate", "--config", str(path)], capture_output=True, text=True, timeout=60)


def test_the_contrib_style_config_meshwatch_takes_is_valid_for_the_go_exporter(tmp_path: Path) -> None:
    """The config ``test_loadbalancing_ring.py`` feeds meshwatch is one contrib's binary accepts too."""
    accepted = go_validate(CONTRIB_STYLE, tmp_path / "ok")
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    planted = copy.deepcopy(CONTRIB_STYLE)
    planted["protocol"]["otlp"]["no_such_key"] = 1  # control: the Go side checks the keys
    refused = go_validate(planted, tmp_path / "planted")
    assert refused.returncode != 0 and "no_such_key" in refused.stderr + refused.stdout
