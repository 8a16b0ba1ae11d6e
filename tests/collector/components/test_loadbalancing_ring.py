"""The loadbalancing exporter's pure parts: the hash ring's movement, cutting a batch by key, its config.

No server: the ring and the split are functions of their inputs. The trace-per-backend
check the integration tests use (``traces_on_several``) gets its positive control here.
"""

from __future__ import annotations

import os
import socket
from collections import Counter

import pytest
from pydantic import ValidationError

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import ComponentId, CreateSettings
from meshwatch.collector.exporters._loadbalancing.resolver import ResolverSettings, StaticResolver
from meshwatch.collector.exporters._loadbalancing.ring import HashRing
from meshwatch.collector.exporters._loadbalancing.routing import split
from meshwatch.collector.exporters.loadbalancing import LoadBalancingConfig, LoadBalancingExporter
from meshwatch.collector.otlp_sink import OtlpSink
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry

from ._lb import traces_on_several
from ._otlp import batch_of, logs, span, traces

KEYS = [os.urandom(16) for _ in range(20_000)]


def owners(ring: HashRing) -> dict[bytes, str]:
    return {key: ring.owner(key) for key in KEYS}


def test_the_same_key_goes_to_the_same_member_whatever_the_order_of_the_members() -> None:
    one = HashRing(["a:4317", "b:4317", "c:4317"])
    other = HashRing(["c:4317", "a:4317", "b:4317"])
    assert owners(one) == owners(other)


def test_keys_are_spread_evenly() -> None:
    shares = Counter(owners(HashRing([f"gw-{i}:4317" for i in range(4)])).values())
    assert set(shares) == {f"gw-{i}:4317" for i in range(4)}
    assert all(0.15 < n / len(KEYS) < 0.35 for n in shares.values()), shares


def test_adding_a_member_moves_about_its_share_and_only_to_it() -> None:
    before = owners(HashRing(["a", "b", "c"]))
    after = owners(HashRing(["a", "b", "c", "d"]))
    moved = [key for key in KEYS if before[key] != after[key]]
    assert {after[key] for key in moved} == {"d"}, "a key moved between members that stayed"
    assert 0.15 < len(moved) / len(KEYS) < 0.35  # ~1/4


def test_removing_a_member_moves_only_its_keys_and_they_come_back_when_it_returns() -> None:
    full = owners(HashRing(["a", "b", "c"]))
    without_b = owners(HashRing(["a", "c"]))
    moved = {key for key in KEYS if full[key] != without_b[key]}
    assert moved == {key for key in KEYS if full[key] == "b"}
    assert owners(HashRing(["a", "b", "c"])) == full


def test_an_empty_ring_says_so() -> None:
    with pytest.raises(LookupError):
        HashRing([]).owner(b"x")


def _mixed_request(trace_ids: list[bytes], spans_each: int = 3) -> Batch:
    spans = [span(f"s{i}", trace_id=t) for t in trace_ids for i in range(spans_each)]
    spans.reverse()  # interleave nothing in order: a trace's spans are not next to each other
    return batch_of(Signal.TRACES, traces({"service.name": "shop"}, spans[::2] + spans[1::2]))


def test_split_by_trace_id_puts_each_trace_on_its_ring_member_keeping_resource_and_scope() -> None:
    ring = HashRing(["a", "b", "c"])
    trace_ids = [os.urandom(16) for _ in range(60)]
    parts = split(_mixed_request(trace_ids), "traceID", ring.owner)
    assert set(parts) == {"a", "b", "c"}
    seen: dict[bytes, str] = {}
    total = 0
    for dest, part in parts.items():
        for rs in part.message.resource_spans:
            assert rs.resource.attributes[0].value.string_value == "shop"
            for ss in rs.scope_spans:
                assert ss.scope.name == "tests"
                for s in ss.spans:
                    assert seen.setdefault(s.trace_id, dest) == dest
                    assert ring.owner(s.trace_id) == dest
                    total += 1
    assert total == 180 and sum(p.items for p in parts.values()) == 180


def test_a_batch_for_one_member_is_passed_on_as_its_own_bytes() -> None:
    batch = _mixed_request([os.urandom(16)])
    parts = split(batch, "traceID", HashRing(["a", "b"]).owner)
    assert list(parts.values()) == [batch]


def test_split_by_service_keeps_a_resource_whole() -> None:
    request = traces({"service.name": "shop"}, [span(trace_id=os.urandom(16)) for _ in range(10)])
    request.resource_spans.extend(traces({"service.name": "cart"}, [span() for _ in range(5)]).resource_spans)
    ring = HashRing([f"m{i}" for i in range(8)])
    parts = split(batch_of(Signal.TRACES, request), "service", ring.owner)
    counts = {dest: part.items for dest, part in parts.items()}
    assert sorted(counts.values()) in ([5, 10], [15])
    assert counts[ring.owner(b"shop")] >= 10


def test_logs_go_by_trace_id_and_without_one_by_service() -> None:
    t1, t2 = os.urandom(16), os.urandom(16)
    request = logs({"service.name": "shop"}, [{"trace_id": t1}, {"trace_id": t2}, {}, {"trace_id": t1}])
    ring = HashRing([f"m{i}" for i in range(16)])
    parts = split(batch_of(Signal.LOGS, request), "traceID", ring.owner)
    where = {
        (r.trace_id or b"shop"): dest
        for dest, part in parts.items()
        for rl in part.message.resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    }
    assert where == {t1: ring.owner(t1), t2: ring.owner(t2), b"shop": ring.owner(b"shop")}
    assert sum(p.items for p in parts.values()) == 4


def test_the_trace_per_backend_check_catches_a_trace_split_across_backends() -> None:
    """Positive control for the check the integration tests rely on: a planted split is found."""
    ring = HashRing(["a", "b"])
    trace_ids = [os.urandom(16) for _ in range(40)]
    good = split(_mixed_request(trace_ids), "traceID", ring.owner)
    assert traces_on_several(_sinks_with(good)) == set()
    # The planted defect: route each span by its span id, as a broken balancer would.
    request = _mixed_request(trace_ids).message
    by_span = {"a": type(request)(), "b": type(request)()}
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                dest = ring.owner(s.span_id)
                by_span[dest].resource_spans.add().scope_spans.add().spans.append(s)
    split_ids = traces_on_several(_sinks_with({d: Batch.from_message(Signal.TRACES, m) for d, m in by_span.items()}))
    assert split_ids and split_ids <= {t.hex() for t in trace_ids}


def _sinks_with(parts: dict[str, Batch]) -> list[OtlpSink]:
    sinks = []
    for part in parts.values():
        sink = OtlpSink()
        sink._add_traces(part.raw)
        sinks.append(sink)
    return sinks


def test_config_refuses_what_it_cannot_honour() -> None:
    resolver = {"static": {"hostnames": ["a"]}}
    with pytest.raises(ValidationError, match="exactly one resolver"):
        LoadBalancingConfig.model_validate({"resolver": {}})
    with pytest.raises(ValidationError, match="on disk"):
        LoadBalancingConfig.model_validate(
            {"resolver": resolver, "protocol": {"otlp": {"sending_queue": {"persistent": False}}}}
        )
    with pytest.raises(ValidationError, match="extra"):
        LoadBalancingConfig.model_validate({"resolver": {"k8s": {"service": "x"}}})
    config = LoadBalancingConfig.model_validate({"resolver": resolver, "routing_key": "traceID"})
    with pytest.raises(ValueError, match="metrics are routed by service"):
        LoadBalancingExporter(CreateSettings(ComponentId("loadbalancing"), Signal.METRICS, Telemetry()), config)


def test_static_hostnames_get_the_otlp_port_when_they_have_none() -> None:
    static = StaticResolver(hostnames=["gw-1", "gw-2:4999", "[::1]", "[::1]:5000", "gw-1:4317"])
    assert static.endpoints() == ["[::1]:4317", "[::1]:5000", "gw-1:4317", "gw-2:4999"]
    assert ResolverSettings(static=static).dns is None


def test_dns_gives_every_address_of_the_name_as_an_endpoint() -> None:
    from meshwatch.collector.exporters._loadbalancing.resolver import resolve_dns

    endpoints = resolve_dns("localhost", 4999)
    assert "127.0.0.1:4999" in endpoints
    assert all(e in ("127.0.0.1:4999", "[::1]:4999") for e in endpoints), endpoints
    with pytest.raises(socket.gaierror):  # the exporter keeps its last backends then
        resolve_dns("no-such-host.invalid", 4317)


#: A loadbalancing config in the keys contrib's exporter documents for the concepts both have (port
#: as a string too). ``test_loadbalancing_interop.py`` has contrib's own binary validate it.
CONTRIB_STYLE: dict = {
    "routing_key": "service",
    "protocol": {
        "otlp": {
            "timeout": "1s",
            "tls": {"insecure": True},
            "compression": "gzip",
            "headers": {"x-tenant": "a"},
            "sending_queue": {"queue_size": 5000},
            "retry_on_failure": {"enabled": True, "max_elapsed_time": "0s"},
        }
    },
    "resolver": {"dns": {"hostname": "otelcol-gw.example", "port": "4317", "interval": "5s", "timeout": "1s"}},
}


def test_a_config_written_for_contribs_exporter_is_taken() -> None:
    """The keys contrib's loadbalancingexporter documents for the concepts both have."""
    config = LoadBalancingConfig.model_validate(CONTRIB_STYLE)
    assert config.resolver.dns is not None and config.resolver.dns.port == 4317
    assert config.protocol.otlp.timeout == 1.0 and config.protocol.otlp.sending_queue.queue_size == 5000
    with pytest.raises(ValidationError, match=r"put them under protocol\.otlp"):
        LoadBalancingConfig.model_validate({"resolver": {"static": {"hostnames": ["a"]}}, "sending_queue": {}})
