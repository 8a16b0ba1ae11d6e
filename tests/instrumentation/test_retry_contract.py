"""One OTLP/gRPC retry contract: the SDK's sender and the collector's exporter read a server's hint alike.

Both read a ``google.rpc.RetryInfo`` wherever a server puts it: inside the status details
(``grpc-status-details-bin``, as the OpenTelemetry Collector and meshwatch's receiver send
it) or on its own key. The SDK used to read only the second, so behind an OpenTelemetry
Collector that pushed back it retried on its own back-off instead of the hint. Where the
two differ on purpose (the collector retries RESOURCE_EXHAUSTED without a hint, because its
queue is durable and gRPC's concurrency limit answers that way; an SDK gives up, as the
spec says), the test says so.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from meshwatch._transport import GrpcSender, retry_info_seconds
from meshwatch.collector.exporters import otlp as collector_otlp


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    whole = int(seconds)
    return error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))
    )


def _in_status(seconds: float) -> bytes:
    detail = any_pb2.Any()
    detail.Pack(_retry_info(seconds))
    return status_pb2.Status(code=8, message="busy", details=[detail]).SerializeToString()


class _Error(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, metadata: tuple, details: str = "") -> None:
        self._code, self._metadata, self._details = code, metadata, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def trailing_metadata(self) -> tuple:
        return self._metadata

    def details(self) -> str:
        return self._details


CASES = [
    pytest.param((("grpc-status-details-bin", _in_status(2.5)),), 2.5, id="in-status-details"),
    pytest.param((("google.rpc.retryinfo-bin", _retry_info(0.25).SerializeToString()),), 0.25, id="own-key"),
    pytest.param((("grpc-status-details-bin", b"\xff\xff not a status"),), None, id="malformed"),
    pytest.param((("x-other", b"1"),), None, id="no-hint"),
    pytest.param((), None, id="no-metadata"),
]


@pytest.mark.parametrize(("metadata", "seconds"), CASES)
def test_sdk_and_collector_read_the_same_hint(metadata: tuple, seconds: float | None) -> None:
    sdk = retry_info_seconds(metadata)
    collector = collector_otlp._retry_after(_Error(grpc.StatusCode.RESOURCE_EXHAUSTED, metadata))
    assert sdk == collector
    assert sdk == (pytest.approx(seconds) if seconds is not None else None)


def test_the_sdk_waits_for_the_hint_an_opentelemetry_collector_sends() -> None:
    sender = _make_sender()
    error = _Error(grpc.StatusCode.RESOURCE_EXHAUSTED, (("grpc-status-details-bin", _in_status(0.75)),))
    sent, waits = _send_once_after(sender, error)
    assert sent is True
    assert waits == [pytest.approx(0.75)]


def test_without_a_hint_resource_exhausted_is_final_for_the_sdk_and_retried_by_the_collector() -> None:
    error = _Error(grpc.StatusCode.RESOURCE_EXHAUSTED, (), "Received message larger than max (5000000 vs. 4194304)")
    sent, waits = _send_once_after(_make_sender(), error)
    assert (sent, waits) == (False, [])  # the spec: no RetryInfo, no retry
    # the collector treats it as permanent too when it is gRPC's size limit (split or dead-letter) ...
    assert collector_otlp._too_large(error)
    # ... but keeps retrying a hint-less RESOURCE_EXHAUSTED otherwise (its queue is durable)
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in collector_otlp._TRANSIENT


def _make_sender() -> GrpcSender:
    """A real sender (a channel to a port nothing listens on; its call is replaced per test)."""
    return GrpcSender("traces", "http://127.0.0.1:1", insecure=True, headers={}, timeout=10.0, compression="none")


def _send_once_after(sender: GrpcSender, error: _Error) -> tuple[bool, list[float]]:
    waits: list[float] = []
    calls = iter([error])

    def call(payload, **kwargs):
        raised = next(calls, None)
        if raised is not None:
            raise raised
        return b""

    sender._call = call
    real_wait = sender._closed.wait

    def wait(delay: float) -> bool:
        waits.append(delay)
        return real_wait(0)

    sender._closed.wait = wait  # type: ignore[method-assign]
    try:
        return sender.send(b"", 1), waits
    finally:
        sender.close()
