"""Memory that stays bounded and comes back (issue 11, findings 3 and 4).

A burst of large legal requests (15 MiB each, under the 16 MiB request limit) takes a
real collector process over its memory limiter's soft limit, so it refuses. Once the
burst is over and the collector holds nothing, it must accept again within seconds,
although CPython and glibc keep much of the memory the burst used unless asked to give
it back. The RSS before the burst, at its peak, right after it and after the idle
period are printed (``pytest -s``) for the record.

And a cardinality burst (200,000 label values of one metric into the ``prometheus``
exporter) must not stop the traces pipeline behind the same memory limiter: the
series limit keeps the exporter small, and the limiter sees what it holds.
"""

from __future__ import annotations

import os
import threading
import time

import grpc
import pytest

from ._helpers import span_request

pytestmark = pytest.mark.integration

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PLACEHOLDER = b"\xa5" * 16
#: Soft limit 150 MiB, ~90 MiB above the idle collector; the burst leaves more than that
#: resident (CPython and glibc keep freed memory), so an RSS-only limiter refuses for good.
LIMIT_MIB, SPIKE_MIB = 200, 50
REQUESTS = 63  # as in the run
RECOVER_WITHIN = 15.0
#: The burst's peak RSS stays under this: 8 requests read by gRPC (2 copies of 15 MiB each)
#: plus the few the soft limit lets be decoded at once, over the idle ~60 MiB.
PEAK_MIB = 480


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _large_request() -> bytes:
    """One trace of ~15 MiB: as large as a legal request gets (the limit is 16 MiB)."""
    one = len(span_request([PLACEHOLDER], spans_per_trace=1000))
    body = span_request([PLACEHOLDER], spans_per_trace=int(15 * 2**20 / one * 1000))
    assert 14 * 2**20 < len(body) < 16 * 2**20
    return body


def test_the_limiter_refuses_under_a_burst_and_accepts_again_once_idle(collector_factory) -> None:
    collector = collector_factory(
        {
            "processors": {
                "memory_limiter": {"limit_mib": LIMIT_MIB, "spike_limit_mib": SPIKE_MIB, "check_interval": "200ms"}
            },
            "exporters": {"debug": {"verbosity": "basic"}},
            "service": {
                "telemetry": {"logs": {"level": "debug"}},
                "pipelines": {
                    "traces": {"receivers": ["otlp"], "processors": ["memory_limiter"], "exporters": ["debug"]}
                },
            },
        }
    )
    pid = collector.process.pid
    body = _large_request()
    channel = grpc.insecure_channel(
        collector.grpc_endpoint,
        options=[("grpc.max_send_message_length", 64 * 2**20), ("grpc.max_receive_message_length", 64 * 2**20)],
    )
    export = channel.unary_unary(TRACES)
    rss_before = _rss_mib(pid)

    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    peak = [rss_before]
    done = threading.Event()

    def sender() -> None:
        while not done.is_set():
            try:
                export(body.replace(PLACEHOLDER, os.urandom(16)), timeout=60)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            with lock:
                outcomes[code] = outcomes.get(code, 0) + 1
                if sum(outcomes.values()) >= REQUESTS:
                    done.set()
            if code != "OK":
                time.sleep(0.2)

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib(pid))
            time.sleep(0.05)

    threads = [threading.Thread(target=sender) for _ in range(8)] + [threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    rss_after_burst = _rss_mib(pid)
    refused_in_burst = collector.metric("meshwatch_receiver_refused_items_total", reason="memory_limit")

    # Idle: nothing in flight, nothing queued (the debug exporter keeps nothing). Then
    # the same legal request, once a second, until it is accepted.
    started = time.monotonic()
    accepted_after = None
    attempts = 0
    refusals: list[grpc.StatusCode] = []
    while time.monotonic() - started < RECOVER_WITHIN:
        time.sleep(1.0)
        attempts += 1
        try:
            export(body.replace(PLACEHOLDER, os.urandom(16)), timeout=60)
        except grpc.RpcError as error:
            refusals.append(error.code())
            continue
        accepted_after = time.monotonic() - started
        break
    rss_after_recovery = _rss_mib(pid)
    time.sleep(3.0)  # the limiter's next checks, with nothing in flight
    rss_after_idle = _rss_mib(pid)
    channel.close()
    print(
        f"\nburst of 15 MiB requests: {outcomes}; memory_limit refusals counted {refused_in_burst:.0f} items\n"
        f"RSS before {rss_before:.1f} MiB, peak {peak[0]:.1f} MiB, after the burst {rss_after_burst:.1f} MiB, "
        f"after the first accepted request {rss_after_recovery:.1f} MiB, idle 3 s later {rss_after_idle:.1f} MiB "
        f"(soft limit {LIMIT_MIB - SPIKE_MIB} MiB)\n"
        f"accepted again after {accepted_after if accepted_after is None else round(accepted_after, 1)} s "
        f"({attempts} attempts)"
    )
    assert outcomes.get("RESOURCE_EXHAUSTED"), f"the burst never reached the limit: {outcomes}, peak {peak[0]:.0f} MiB"
    assert refused_in_burst > 0
    assert set(refusals) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}, refusals
    # The burst's peak is bounded: requests are admitted by their size on the wire before they
    # are decoded (measured 362 MiB; 619 MiB when they were decoded before the limiter saw them).
    assert peak[0] < PEAK_MIB, f"peak RSS {peak[0]:.0f} MiB during the burst"
    # Large requests do not pin memory: once idle, the limiter has handed most of it back
    # (gc + malloc_trim; measured 111-173 MiB here, 228-233 MiB without, from a 600-800 MiB peak).
    assert rss_after_idle < LIMIT_MIB, f"RSS {rss_after_idle:.0f} MiB after idle"
    assert accepted_after is not None, (
        f"still refusing {RECOVER_WITHIN:.0f} s after the burst with nothing held (RSS {rss_after_idle:.0f} MiB); "
        f"log:\n{collector.log_tail()}"
    )


METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def _label_burst(first: int, count: int) -> bytes:
    """A cumulative counter with ``count`` points, one per ``user.id`` value from ``first`` on."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    attr = rm.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", "burst"
    metric = rm.scope_metrics.add().metrics.add(name="logins", unit="1")
    metric.sum.aggregation_temporality = 2  # cumulative
    metric.sum.is_monotonic = True
    now = time.time_ns()
    for index in range(first, first + count):
        point = metric.sum.data_points.add(start_time_unix_nano=now - 10**9, time_unix_nano=now, as_int=1)
        label = point.attributes.add()
        label.key, label.value.string_value = "user.id", f"user-{index}"
    return request.SerializeToString()


def test_a_cardinality_burst_in_one_metric_does_not_stop_the_traces_pipeline(collector_factory) -> None:
    limiter = {"limit_mib": 250, "spike_limit_mib": 50, "check_interval": "200ms"}  # soft limit 200 MiB
    collector = collector_factory(
        {
            "processors": {"memory_limiter": limiter},
            "exporters": {"debug": {"verbosity": "basic"}, "prometheus": {"endpoint": "127.0.0.1:0"}},
            "service": {
                "pipelines": {
                    "traces": {"receivers": ["otlp"], "processors": ["memory_limiter"], "exporters": ["debug"]},
                    "metrics": {"receivers": ["otlp"], "processors": ["memory_limiter"], "exporters": ["prometheus"]},
                }
            },
        }
    )
    pid = collector.process.pid
    rss_before = _rss_mib(pid)
    with grpc.insecure_channel(collector.grpc_endpoint) as channel:
        export_metrics = channel.unary_unary(METRICS)
        export_traces = channel.unary_unary(TRACES)
        for first in range(0, 200_000, 10_000):  # 200,000 label values, as in the run
            export_metrics(_label_burst(first, 10_000), timeout=60)
        time.sleep(2.0)  # folded, and the limiter has looked
        rss_after = _rss_mib(pid)
        answers = []
        for _ in range(10):
            try:
                export_traces(span_request([os.urandom(16)], spans_per_trace=10), timeout=10)
                answers.append("OK")
            except grpc.RpcError as error:
                answers.append(error.code().name)
            time.sleep(0.2)
    refused = len(answers) - answers.count("OK")
    overflowed = collector.metric("meshwatch_exporter_overflowed_points_total", exporter="prometheus")
    held = collector.metric("meshwatch_collector_held_bytes", component="exporter prometheus/metrics")
    print(
        f"\n200,000 label values of one metric: RSS {rss_before:.1f} -> {rss_after:.1f} MiB, "
        f"prometheus exporter holds {held / 2**20:.1f} MiB (estimate), {overflowed:.0f} points overflowed, "
        f"{refused} of 10 trace requests refused"
    )
    assert refused == 0, answers
    assert overflowed == 200_000 - 1999
