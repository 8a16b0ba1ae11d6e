"""The loadbalancing exporter through real meshwatch-collector processes.

A load-balancing collector sends to two downstream collectors, each exporting to its own
``otlp_sink``, which keeps every span it is sent (duplicates too): a span that is lost,
sent twice, or a trace that reached both backends shows at the sinks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshwatch.collector.component import ComponentId, CreateSettings
from meshwatch.collector.exporters.loadbalancing import LoadBalancingConfig, LoadBalancingExporter
from meshwatch.collector.host import CollectorHost
from meshwatch.collector.otlp_sink import OtlpSink, otlp_sink
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry
from meshwatch.collector.testing import RunningCollector, free_port
from meshwatch.stack.testing import eventually

from ..core._helpers import SpanLoad, sink_exporter, span_request
from ._lb import count_across, traces_on_several
from ._otlp import batch_of, span, traces

pytestmark = pytest.mark.integration

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def downstream(sink: OtlpSink) -> dict[str, Any]:
    """A backend collector: OTLP in, the sink out."""
    return {
        "exporters": {"otlphttp/sink": sink_exporter(sink)},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlphttp/sink"]}}},
    }


def balancer(hostnames: list[str], **failover: Any) -> dict[str, Any]:
    return {
        "exporters": {
            "loadbalancing": {
                "routing_key": "traceID",
                "protocol": {
                    "otlp": {
                        "tls": {"insecure": True},
                        "timeout": "3s",
                        "retry_on_failure": {"initial_interval": "100ms", "max_interval": "1s"},
                    }
                },
                "resolver": {"static": {"hostnames": hostnames}},
                "failover": {"unhealthy_after": "1s", "probe_interval": "300ms", **failover},
            }
        },
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["loadbalancing"]}}},
    }


def send(endpoint: str, requests: list[bytes]) -> None:
    with grpc.insecure_channel(endpoint) as channel:
        export = channel.unary_unary(EXPORT)
        for request in requests:
            export(request, timeout=10)


def wait_all(sinks: list[OtlpSink], trace_ids: list[bytes], spans: int, timeout: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and count_across(sinks, trace_ids, spans)["missing_spans"]:
        time.sleep(0.3)
    time.sleep(1.0)  # let duplicates in flight land too
    return count_across(sinks, trace_ids, spans)


def two_backends(collector_factory: Any, sinks: list[OtlpSink]) -> list[RunningCollector]:
    return [collector_factory(downstream(sink), name=f"backend-{i}") for i, sink in enumerate(sinks)]


def test_each_trace_reaches_one_backend_and_both_get_traces(collector_factory: Any) -> None:
    with otlp_sink() as s0, otlp_sink() as s1:
        backends = two_backends(collector_factory, [s0, s1])
        lb = collector_factory(balancer([b.grpc_endpoint for b in backends]), name="lb")
        trace_ids = [os.urandom(16) for _ in range(200)]
        # Each trace's 6 spans come in three requests, each request holding spans of 50 traces.
        requests = []
        for part in range(3):
            for start in range(0, 200, 50):
                spans = [
                    span(f"op-{part}-{i}", trace_id=t, span_id=os.urandom(8))
                    for t in trace_ids[start : start + 50]
                    for i in range(2)
                ]
                requests.append(traces({"service.name": "shop"}, spans).SerializeToString())
        send(lb.grpc_endpoint, requests)
        counts = wait_all([s0, s1], trace_ids, 6)
        assert counts["missing_spans"] == 0 and counts["duplicate_spans"] == 0, counts
        assert traces_on_several([s0, s1]) == set()
        per_sink = [len({s.trace_id for s in sink.spans}) for sink in (s0, s1)]
        assert min(per_sink) > 40, per_sink  # ~100 each: both backends take part
        assert lb.metric("meshwatch_loadbalancer_backend_up", backend=backends[0].grpc_endpoint) == 1


def test_a_backend_killed_under_load_loses_nothing_and_its_queue_is_rerouted(collector_factory: Any) -> None:
    """SIGKILL one backend under load: its keys and what the balancer had queued for it go to the
    other; after it is restarted (its own queue is on its disk) every acknowledged span has arrived."""
    with otlp_sink() as s0, otlp_sink() as s1:
        backends = two_backends(collector_factory, [s0, s1])
        victim = backends[1].grpc_endpoint
        lb = collector_factory(balancer([b.grpc_endpoint for b in backends]), name="lb")
        load = SpanLoad(lb.grpc_endpoint, spans=20, threads=2).start()
        time.sleep(3)
        backends[1].kill()
        killed_at = len(load.acked)
        time.sleep(6)  # > unhealthy_after: the victim leaves the ring, its queue is rerouted
        load.stop()
        assert len(load.acked) > killed_at + 20, f"the load stalled after the kill: {load.refused}"
        eventually(
            lambda: lb.metric("meshwatch_loadbalancer_backend_up", backend=victim) == 0, timeout=20, what="victim out"
        )
        rerouted = lb.metric("meshwatch_loadbalancer_rerouted_items_total", backend=victim, reason="unhealthy")
        before_restart = count_across([s0, s1], load.acked, 20)
        backends[1].restart()  # what it had acknowledged is in its own queue: it sends it now
        counts = wait_all([s0, s1], load.acked, 20)
        print(
            f"\nacknowledged/arrived/missing/duplicates: {counts}; rerouted {rerouted:.0f} spans; "
            f"missing before the killed backend's restart: {before_restart['missing_spans']}"
        )
        assert counts["missing_spans"] == 0, counts
        assert rerouted > 0
        # With the victim back its key range returns: new traces reach it again.
        eventually(
            lambda: lb.metric("meshwatch_loadbalancer_backend_up", backend=victim) == 1, timeout=20, what="victim back"
        )
        later = [os.urandom(16) for _ in range(40)]
        send(lb.grpc_endpoint, [span_request(later, spans_per_trace=2)])
        assert wait_all([s0, s1], later, 2)["missing_spans"] == 0
        assert {t.hex() for t in later} & {s.trace_id for s in s1.spans}, "the victim got no new trace back"


def test_a_backend_removed_from_the_static_list_has_its_queue_sent_to_the_others(collector_factory: Any) -> None:
    """Data queued for a backend that is down stays on disk; restarted with that backend removed from
    ``hostnames``, the balancer reroutes its queue folder to the backend that remains."""
    with otlp_sink() as s0, otlp_sink() as s1:
        backends = two_backends(collector_factory, [s0, s1])
        gone = backends[1]
        gone.stop()
        endpoints = [b.grpc_endpoint for b in backends]
        lb = collector_factory(balancer(endpoints, unhealthy_after="10m"), name="lb")  # no failover here
        trace_ids = [os.urandom(16) for _ in range(100)]
        send(lb.grpc_endpoint, [span_request(trace_ids[i : i + 10], spans_per_trace=3) for i in range(0, 100, 10)])
        eventually(lambda: s0.spans, timeout=20, what="the live backend's share")
        queued = lb.metric("meshwatch_queue_size_items", exporter=f"loadbalancing/{gone.grpc_endpoint}")
        assert queued > 0, "nothing was queued for the stopped backend"
        lb.stop()
        lb.config["exporters"]["loadbalancing"]["resolver"]["static"]["hostnames"] = [endpoints[0]]
        lb.restart()
        counts = wait_all([s0, s1], trace_ids, 3)
        assert counts["missing_spans"] == 0, counts
        assert not s1.spans
        moved = lb.metric("meshwatch_loadbalancer_rerouted_items_total", backend=gone.grpc_endpoint, reason="removed")
        assert moved == queued, (moved, queued)


def test_a_dns_change_reroutes_the_dropped_backends_queue_and_gives_keys_back_when_it_returns(
    collector_factory: Any, tmp_path: Path
) -> None:
    """The DNS resolver with a name whose addresses the test sets (the lookup is the seam; the
    backends are real collectors)."""
    with otlp_sink() as s0, otlp_sink() as s1:
        backends = two_backends(collector_factory, [s0, s1])
        endpoints = [b.grpc_endpoint for b in backends]
        backends[1].stop()
        answer = list(endpoints)

        def lookup(hostname: str, port: int) -> list[str]:
            assert hostname == "gateways.test"
            return list(answer)

        config = LoadBalancingConfig.model_validate(
            {
                "protocol": {"otlp": {"tls": {"insecure": True}, "retry_on_failure": {"max_interval": "500ms"}}},
                "resolver": {"dns": {"hostname": "gateways.test", "interval": "200ms"}},
                "failover": {"unhealthy_after": "10m"},
            }
        )
        host = CollectorHost(tmp_path / "lb-storage")
        telemetry = Telemetry()
        exporter = LoadBalancingExporter(
            CreateSettings(ComponentId("loadbalancing"), Signal.TRACES, telemetry), config, lookup
        )
        exporter.start(host)
        try:
            assert exporter.ring.members == set(endpoints)
            trace_ids = [os.urandom(16) for _ in range(60)]
            exporter.consume(
                batch_of(Signal.TRACES, traces({"service.name": "x"}, [span(trace_id=t) for t in trace_ids]))
            )
            eventually(lambda: exporter.backends()[endpoints[1]]["queued"], timeout=10, what="queued for the down one")
            answer.remove(endpoints[1])
            eventually(lambda: endpoints[1] not in exporter.backends(), timeout=20, what="the dropped backend drained")
            assert wait_all([s0], trace_ids, 1)["missing_spans"] == 0
            registry = telemetry.registry
            moved = registry.get_sample_value(
                "meshwatch_loadbalancer_rerouted_items_total",
                {"exporter": "loadbalancing", "signal": "traces", "backend": endpoints[1], "reason": "removed"},
            )
            assert moved and moved > 0
            backends[1].restart()
            answer.append(endpoints[1])
            eventually(lambda: exporter.ring.members == set(endpoints), timeout=20, what="it is back in the ring")
            later = [os.urandom(16) for _ in range(40)]
            exporter.consume(batch_of(Signal.TRACES, traces({"service.name": "x"}, [span(trace_id=t) for t in later])))
            assert wait_all([s0, s1], later, 1)["missing_spans"] == 0
            assert {s.trace_id for s in s1.spans} == {t.hex() for t in later if exporter.ring.owner(t) == endpoints[1]}
        finally:
            exporter.shutdown(5.0)


def test_the_reference_collector_as_one_backend(collector_factory: Any, tmp_path: Path) -> None:
    """contrib's otelcol (v0.165) as one of the two backends: traces split by id between it and a
    meshwatch collector, each on one; SIGKILLed, what the balancer had queued for it and the
    traces sent after go to the meshwatch backend."""
    from .test_kafka_interop import otelcol

    with otlp_sink() as go_sink, otlp_sink() as mw_sink:
        go_port = free_port()
        go_config = {
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{go_port}"}}}},
            "exporters": {"otlphttp": {"endpoint": go_sink.url, "compression": "none"}},
            "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlphttp"]}}},
        }
        with otelcol(go_config, tmp_path / "otelcol") as go:
            ours = collector_factory(downstream(mw_sink), name="backend-meshwatch")
            go_endpoint = f"127.0.0.1:{go_port}"
            lb = collector_factory(balancer([go_endpoint, ours.grpc_endpoint]), name="lb")
            first = [os.urandom(16) for _ in range(100)]
            send(lb.grpc_endpoint, [span_request(first[i : i + 20], spans_per_trace=3) for i in range(0, 100, 20)])
            counts = wait_all([go_sink, mw_sink], first, 3)
            assert counts["missing_spans"] == 0 and counts["duplicate_spans"] == 0, counts
            assert traces_on_several([go_sink, mw_sink]) == set()
            assert go_sink.spans and mw_sink.spans
            go.kill()
            go.wait(10)
            after = [os.urandom(16) for _ in range(100)]
            send(lb.grpc_endpoint, [span_request(after[i : i + 20], spans_per_trace=3) for i in range(0, 100, 20)])
            counts = wait_all([mw_sink], after, 3)
            assert counts["missing_spans"] == 0, counts
            assert lb.metric("meshwatch_loadbalancer_rerouted_items_total", backend=go_endpoint) > 0


def test_logs_by_trace_id_and_metrics_by_service_each_reach_one_backend(collector_factory: Any) -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from ._otlp import kvs, logs

    with otlp_sink() as s0, otlp_sink() as s1:
        backends = []
        for i, sink in enumerate((s0, s1)):
            config = downstream(sink)
            pipelines = config["service"]["pipelines"]
            for signal in ("logs", "metrics"):
                pipelines[signal] = {"receivers": ["otlp"], "exporters": ["otlphttp/sink"]}
            backends.append(collector_factory(config, name=f"backend-{i}"))
        config = balancer([b.grpc_endpoint for b in backends])
        exporters = config["exporters"]
        exporters["loadbalancing/metrics"] = {**exporters["loadbalancing"], "routing_key": "service"}
        config["service"]["pipelines"]["logs"] = {"receivers": ["otlp"], "exporters": ["loadbalancing"]}
        config["service"]["pipelines"]["metrics"] = {"receivers": ["otlp"], "exporters": ["loadbalancing/metrics"]}
        lb = collector_factory(config, name="lb")
        trace_ids = [os.urandom(16) for _ in range(50)]
        log_requests = [
            logs({"service.name": "shop"}, [{"trace_id": t, "body": f"{t.hex()}-{part}"} for t in trace_ids])
            for part in range(3)
        ]
        metrics = ExportMetricsServiceRequest()
        for n in range(30):
            rm = metrics.resource_metrics.add()
            rm.resource.attributes.extend(kvs({"service.name": f"svc-{n}"}))
            metric = rm.scope_metrics.add().metrics.add()
            metric.name = "queue.depth"
            for k in range(4):
                point = metric.gauge.data_points.add()
                point.as_int = k
                point.attributes.extend(kvs({"k": k}))
        with grpc.insecure_channel(lb.grpc_endpoint) as channel:
            export_logs = channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export")
            for request in log_requests:
                export_logs(request.SerializeToString(), timeout=10)
            channel.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")(
                metrics.SerializeToString(), timeout=10
            )
        eventually(lambda: len(s0.logs) + len(s1.logs) >= 150, timeout=30, what="every log record")
        eventually(lambda: len(s0.points) + len(s1.points) >= 120, timeout=30, what="every metric point")
        time.sleep(1)
        assert len(s0.logs) + len(s1.logs) == 150 and len(s0.points) + len(s1.points) == 120
        log_traces = [{r.trace_id for r in sink.logs} for sink in (s0, s1)]
        services = [{p.resource["service.name"] for p in sink.points} for sink in (s0, s1)]
        assert not log_traces[0] & log_traces[1], "a trace's log records reached both backends"
        assert not services[0] & services[1], "a service's metrics reached both backends"
        assert all(log_traces) and all(services), "one backend got nothing"
