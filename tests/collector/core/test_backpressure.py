"""Backpressure a sender understands (issue 11, finding 2 and the size part of 10).

A flood of concurrent calls beyond the receiver's capacity is refused by the collector
itself (gRPC RESOURCE_EXHAUSTED with RetryInfo, HTTP 429 with Retry-After) and counted,
never with gRPC's bare "Concurrent RPC limit exceeded!" that senders treat as permanent.
A request of any size over the limit gets the documented INVALID_ARGUMENT / 413, counted.
Against a real collector process; its exporter points at a closed port (the queue takes
everything, nothing drains), so no backend is involved.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections import Counter

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from meshwatch.collector.testing import free_port

from ._helpers import random_trace_ids, span_request

pytestmark = pytest.mark.integration

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
REFUSED = "meshwatch_receiver_refused_items_total"


def _config(receiver: dict | None = None) -> dict:
    return {
        "receivers": {"otlp": receiver or {}},
        "exporters": {"otlp/void": {"endpoint": f"127.0.0.1:{free_port()}", "tls": {"insecure": True}}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/void"]}}},
    }


def _retry_delay(error: grpc.RpcError) -> float | None:
    """The RetryInfo delay in the trailing google.rpc.Status details, if there is one."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def _flood(call, calls: int) -> list:
    """``calls`` threads released together; each returns what ``call()`` returned or raised."""
    go = threading.Event()
    results: list = []
    lock = threading.Lock()

    def one() -> None:
        go.wait()
        try:
            result = call()
        except Exception as exc:
            result = exc
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one) for _ in range(calls)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(120)
    return results


def test_a_grpc_flood_is_refused_with_retry_info_and_counted(collector_factory) -> None:
    collector = collector_factory(_config())
    body = span_request(random_trace_ids(1))
    with grpc.insecure_channel(collector.grpc_endpoint) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        export = channel.unary_unary(TRACES)
        results = _flood(lambda: export(body, timeout=60), 1000)
    refusals = [r for r in results if isinstance(r, grpc.RpcError)]
    codes = Counter(r.code().name for r in refusals)
    assert len(results) == 1000
    assert set(codes) <= {"RESOURCE_EXHAUSTED"}, codes
    assert refusals, "1000 concurrent calls must exceed the default 128 (16 workers × 8)"
    delays = [_retry_delay(r) for r in refusals]
    assert sum(d is not None and d > 0 for d in delays) == len(refusals), "every refusal carries RetryInfo"
    assert all("concurrent requests" in r.details() for r in refusals)
    counted = collector.metric(REFUSED, transport="grpc", reason="concurrency_limit")
    assert counted == len(refusals)
    accepted = collector.metric("meshwatch_receiver_accepted_items_total", transport="grpc")
    assert accepted == 1000 - len(refusals)


def test_an_http_flood_gets_429_with_retry_after_and_is_counted(collector_factory) -> None:
    collector = collector_factory(_config({"protocols": {"grpc": {}, "http": {"max_concurrent_requests": 4}}}))
    body = span_request(random_trace_ids(1))
    url = f"{collector.http_url}/v1/traces"

    def post():
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/x-protobuf"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Retry-After")

    results = _flood(post, 200)
    statuses = Counter(status for status, _ in results)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429], "200 concurrent requests must exceed max_concurrent_requests: 4"
    assert all(int(hint) >= 1 for status, hint in results if status == 429)
    assert collector.metric(REFUSED, transport="http", reason="concurrency_limit") == statuses[429]


def test_requests_far_over_the_size_limit_get_the_documented_answer(collector_factory) -> None:
    collector = collector_factory(_config({"max_request_body_size": 64 * 1024}))
    huge = b"\x00" * (5 * 64 * 1024)  # five times the limit: gRPC's own limit used to answer this
    with grpc.insecure_channel(collector.grpc_endpoint) as channel, pytest.raises(grpc.RpcError) as error:
        channel.unary_unary(TRACES)(huge, timeout=30)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT, error.value
    assert "larger than max_request_body_size (65536 bytes)" in error.value.details()
    request = urllib.request.Request(
        f"{collector.http_url}/v1/traces", data=huge, headers={"Content-Type": "application/x-protobuf"}
    )
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(request, timeout=30)
    assert http_error.value.code == 413
    assert collector.metric(REFUSED, transport="grpc", reason="too_large") == 1
    assert collector.metric(REFUSED, transport="http", reason="too_large") == 1
