"""Bad input gets the protocol's own error with a message saying what was wrong; the collector keeps running.

Also: bearer-token auth (401 / UNAUTHENTICATED, the token never in the log) and
backpressure from a full queue (gRPC RESOURCE_EXHAUSTED with RetryInfo, HTTP 429
with Retry-After), each counted in the receiver's refused-items metric.
"""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from ._helpers import random_trace_ids, span_request, traces_config

pytestmark = pytest.mark.integration

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _post(url: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST"):
    request = urllib.request.Request(url, data=body if method == "POST" else None, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def _grpc_export(endpoint: str, body: bytes, metadata=()):
    with grpc.insecure_channel(endpoint) as channel:
        return channel.unary_unary(TRACES)(body, timeout=30, metadata=metadata)


PB = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def collector(collector_factory, jaeger):
    receiver = {"max_request_body_size": 64 * 1024}
    return collector_factory(traces_config(jaeger, receiver=receiver))


def test_http_bad_requests_get_clear_errors_and_are_counted(collector) -> None:
    url = f"{collector.http_url}/v1/traces"
    good = span_request(random_trace_ids(1))
    cases = [
        # (what, body, headers, status, words in the message)
        ("garbage protobuf", b"\xff\xff\xff\x0fnot protobuf", PB, 400, "cannot decode the OTLP protobuf request"),
        ("invalid JSON", b"{not json", JSON, 400, "not valid JSON"),
        (
            "bad hex id",
            json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}).encode(),
            JSON,
            400,
            "traceId 'xyz' is not a hex string",
        ),
        ("wrong type", json.dumps({"resourceSpans": "no"}).encode(), JSON, 400, "not an OTLP/JSON traces request"),
        ("text/plain", good, {"Content-Type": "text/plain"}, 415, "Content-Type 'text/plain' is not supported"),
        ("no content type", good, {}, 415, "is not supported"),
        ("brotli", good, {**PB, "Content-Encoding": "br"}, 415, "Content-Encoding 'br' is not supported"),
        ("broken gzip", b"\x1f\x8b\x08\x00garbage", {**PB, "Content-Encoding": "gzip"}, 400, "not valid gzip"),
        ("too large", b"\x00" * (70 * 1024), PB, 413, "larger than max_request_body_size (65536 bytes)"),
        (
            "zip bomb",
            gzip.compress(b"\x00" * (8 * 1024 * 1024)),
            {**PB, "Content-Encoding": "gzip"},
            413,
            "once decompressed",
        ),
    ]
    for what, body, headers, status, words in cases:
        got, response, _ = _post(url, body, headers)
        is_json = headers.get("Content-Type") == "application/json"
        message = json.loads(response)["message"] if is_json else status_pb2.Status.FromString(response).message
        assert (got, words in message) == (status, True), f"{what}: {got} {message!r}"
    assert _post(f"{collector.http_url}/v1/nothing", good, PB)[0] == 404
    assert _post(url, b"", method="GET")[0] == 405
    # the collector is alive, healthy, and still takes good data
    assert _post(url, good, PB)[0] == 200
    assert collector.health()[0] == 200
    refused = "meshwatch_receiver_refused_items_total"
    assert collector.metric(refused, transport="http", reason="malformed") == 5
    assert collector.metric(refused, transport="http", reason="unsupported_media_type") == 3
    assert collector.metric(refused, transport="http", reason="too_large") == 2


def test_grpc_bad_requests_get_invalid_argument(collector) -> None:
    with pytest.raises(grpc.RpcError) as error:
        _grpc_export(collector.grpc_endpoint, b"\xff\xff\xff\x0fnot protobuf")
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot decode the OTLP protobuf request" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        _grpc_export(collector.grpc_endpoint, b"\x00" * (70 * 1024))
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than max_request_body_size" in error.value.details()
    _grpc_export(collector.grpc_endpoint, span_request(random_trace_ids(1)))  # still serving
    assert collector.metric("meshwatch_receiver_refused_items_total", transport="grpc", reason="malformed") == 1
    assert collector.metric("meshwatch_receiver_refused_items_total", transport="grpc", reason="too_large") == 1


def test_bearer_token_auth(collector_factory, jaeger) -> None:
    token = "tok-3f9a1c7e5b2d"
    config = traces_config(jaeger, receiver={"auth": {"bearer_token": "${env:TEST_OTLP_TOKEN}"}})
    collector = collector_factory(config, env={"TEST_OTLP_TOKEN": token})
    body = span_request(random_trace_ids(1))
    url = f"{collector.http_url}/v1/traces"
    assert _post(url, body, PB)[0] == 401
    assert _post(url, body, {**PB, "Authorization": "Bearer wrong"})[0] == 401
    assert _post(url, body, {**PB, "Authorization": f"Bearer {token}"})[0] == 200
    with pytest.raises(grpc.RpcError) as error:
        _grpc_export(collector.grpc_endpoint, body)
    assert error.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as error:
        _grpc_export(collector.grpc_endpoint, body, metadata=(("authorization", "Bearer nope"),))
    assert error.value.code() is grpc.StatusCode.UNAUTHENTICATED
    _grpc_export(collector.grpc_endpoint, body, metadata=(("authorization", f"Bearer {token}"),))
    assert collector.metric("meshwatch_receiver_refused_items_total", reason="unauthenticated") == 4
    assert collector.metric("meshwatch_receiver_accepted_items_total") == 2
    collector.stop()
    assert token not in collector.log_path.read_text()
    assert token not in collector.config_path.read_text()  # the file holds the ${env:...} reference


def _post_with_headers(url: str, body: bytes, headers: list[tuple[str, str]]) -> int:
    """POST with repeated header names (urllib cannot send a header twice)."""
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("POST", parts.path)
        for key, value in [("Content-Type", "application/x-protobuf"), ("Content-Length", str(len(body))), *headers]:
            connection.putheader(key, value)
        connection.endheaders(body)
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.fixture
def authed(collector_factory, jaeger):
    token = "tok-8d2e6f0a4c1b"
    config = traces_config(jaeger, receiver={"auth": {"bearer_token": "${env:TEST_OTLP_TOKEN}"}})
    return collector_factory(config, env={"TEST_OTLP_TOKEN": token}), token


def test_the_bearer_scheme_is_case_insensitive(authed) -> None:
    collector, token = authed
    body = span_request(random_trace_ids(1))
    for scheme in ("bearer", "BEARER", "bEaReR"):  # RFC 6750 §2.1, RFC 9110 §11.1
        assert (
            _post_with_headers(f"{collector.http_url}/v1/traces", body, [("Authorization", f"{scheme} {token}")]) == 200
        )
        _grpc_export(collector.grpc_endpoint, body, metadata=(("authorization", f"{scheme} {token}"),))
    assert collector.metric("meshwatch_receiver_accepted_items_total") == 6


def test_two_authorization_values_are_refused_on_both_transports(authed) -> None:
    collector, token = authed
    body = span_request(random_trace_ids(1))
    pairs = [(f"Bearer {token}", "Bearer wrong"), ("Bearer wrong", f"Bearer {token}"), (f"Bearer {token}",) * 2]
    for first, second in pairs:  # whichever of them is right: the two transports used to pick differently
        status = _post_with_headers(
            f"{collector.http_url}/v1/traces", body, [("Authorization", first), ("Authorization", second)]
        )
        assert status == 401, (first, second)
        with pytest.raises(grpc.RpcError) as error:
            _grpc_export(collector.grpc_endpoint, body, metadata=(("authorization", first), ("authorization", second)))
        assert error.value.code() is grpc.StatusCode.UNAUTHENTICATED, (first, second)
        assert "more than one authorization value" in error.value.details().lower()
    refused = "meshwatch_receiver_refused_items_total"
    assert collector.metric(refused, transport="http", reason="unauthenticated") == 3
    assert collector.metric(refused, transport="grpc", reason="unauthenticated") == 3
    assert collector.metric("meshwatch_receiver_accepted_items_total") == 0


def test_full_queue_pushes_back_with_retry_hints(collector_factory, tmp_path) -> None:
    """No backend reachable and a small queue: once full, senders are told to come back later."""
    from meshwatch.collector.testing import free_port

    exporter = {
        "endpoint": f"127.0.0.1:{free_port()}",  # nothing listens there
        "tls": {"insecure": True},
        "sending_queue": {"queue_size": 2000},
    }
    config = {
        "exporters": {"otlp/down": exporter},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/down"]}}},
    }
    collector = collector_factory(config)
    body = span_request(random_trace_ids(10), spans_per_trace=50)  # 500 spans
    for _ in range(4):
        _grpc_export(collector.grpc_endpoint, body)  # 2000 spans: the queue is now full
    with pytest.raises(grpc.RpcError) as error:
        _grpc_export(collector.grpc_endpoint, body)
    assert error.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "is full" in error.value.details()
    trailers = dict(error.value.trailing_metadata())
    retry = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
    assert retry.retry_delay.seconds >= 1
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)

    got, _, headers = _post(f"{collector.http_url}/v1/traces", body, PB)
    assert got == 429 and int(headers["Retry-After"]) >= 1
    assert collector.metric("meshwatch_receiver_accepted_items_total") == 2000
    assert collector.metric("meshwatch_receiver_refused_items_total", reason="queue_full") == 1000
    assert collector.metric("meshwatch_queue_size_items", exporter="otlp/down") == 2000
    assert collector.metric("meshwatch_exporter_backend_up", exporter="otlp/down") == 0
    assert collector.health()[0] == 200
