"""Sending already-encoded OTLP requests over gRPC or HTTP/protobuf, with bounded retries.

The exporters take spans or log records, encode them with ``_otlp`` and hand
the bytes to a sender. Retries follow the OTLP specification: gRPC
``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``ABORTED``, ``OUT_OF_RANGE``, ``CANCELLED``,
``DATA_LOSS``, and ``RESOURCE_EXHAUSTED`` only with a RetryInfo (without one it is,
e.g., gRPC's "message larger than max", which no retry fixes), each waiting for the
RetryInfo's delay when the server sent one; HTTP 429, 502, 503, 504 (honouring
``Retry-After``) and connection errors. Back-off is exponential with jitter and
never passes the export deadline. A partial success (the collector kept some
items and rejected others) counts the rejected ones as dropped.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from ._dropped import TALLY

__all__ = ["GrpcSender", "HttpSender", "OTLPExporter", "OTLPMetricExporter", "Sender"]

_logger = logging.getLogger("meshwatch")

_SERVICES = {
    "traces": ("/opentelemetry.proto.collector.trace.v1.TraceService/Export", "ExportTraceServiceResponse"),
    "logs": ("/opentelemetry.proto.collector.logs.v1.LogsService/Export", "ExportLogsServiceResponse"),
    "metrics": ("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export", "ExportMetricsServiceResponse"),
}
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})


def error_text(body: bytes, content_type: str) -> str:
    """The message of an OTLP/HTTP error answer, for a person.

    OTLP/HTTP answers errors with a ``google.rpc.Status`` in the request's encoding, so a
    protobuf body is decoded for its ``message`` (printing it raw showed bytes such as
    ``\\b\\x03\\x125this collector has no logs pipeline``); JSON gives its ``message``; anything
    else is shown as text, shortened.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/x-protobuf":
        from google.protobuf.message import DecodeError
        from google.rpc.status_pb2 import Status

        try:
            status = Status.FromString(body)
        except DecodeError:
            pass
        else:
            if status.message:
                return status.message[:500]
    elif kind == "application/json":
        import json

        try:
            parsed = json.loads(body)
        except ValueError:
            pass
        else:
            if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
                return parsed["message"][:500]
    text = body[:200].decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


_MAX_BACKOFF = 8.0


_last_warning: dict[tuple[str, str], float] = {}
_WARN_EVERY = 60.0


def _warn(signal: str, reason: str, message: str, *args: Any) -> None:
    """A failed export is said once a minute per signal and reason; every lost item is counted anyway."""
    now = time.monotonic()
    key = (signal, reason)
    if now - _last_warning.get(key, -_WARN_EVERY) >= _WARN_EVERY:
        _last_warning[key] = now
        _logger.warning(message, *args)


def retry_info_seconds(trailing_metadata: Any) -> float | None:
    """The delay of a ``google.rpc.RetryInfo`` in gRPC trailing metadata, wherever the server put it.

    The OpenTelemetry Collector and meshwatch's receiver put it in the status details
    (``grpc-status-details-bin``, a ``google.rpc.Status``); some servers send it on its own
    (``google.rpc.retryinfo-bin``). None when there is none or it does not parse. The
    collector's OTLP exporter reads hints the same way (a test holds the two together).
    """
    try:
        from google.protobuf.message import DecodeError
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:  # pragma: no cover - googleapis-common-protos comes with the OTLP exporters
        return None
    for key, value in trailing_metadata or ():
        try:
            if key == "grpc-status-details-bin":
                for detail in status_pb2.Status.FromString(value).details:
                    info = error_details_pb2.RetryInfo()
                    if detail.Unpack(info):
                        return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            elif key == "google.rpc.retryinfo-bin":
                info = error_details_pb2.RetryInfo.FromString(value)
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        except (DecodeError, TypeError):
            continue
    return None


def _retry_hint(error: Any) -> float | None:
    try:
        return retry_info_seconds(error.trailing_metadata())
    except Exception:  # an error without metadata (a channel that never connected): no hint
        return None


def _backoff(attempt: int) -> float:
    return min(_MAX_BACKOFF, 0.5 * 2**attempt) * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto


def _rejected(signal: str, response: bytes) -> tuple[int, str]:
    """Rejected item count and message of an Export*ServiceResponse's partial_success."""
    if not response:
        return 0, ""
    if signal == "traces":
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        parsed = ExportTraceServiceResponse.FromString(response)
        return parsed.partial_success.rejected_spans, parsed.partial_success.error_message
    if signal == "metrics":
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

        parsed_metrics = ExportMetricsServiceResponse.FromString(response)
        return parsed_metrics.partial_success.rejected_data_points, parsed_metrics.partial_success.error_message
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

    parsed_logs = ExportLogsServiceResponse.FromString(response)
    return parsed_logs.partial_success.rejected_log_records, parsed_logs.partial_success.error_message


def grpc_credentials(certificate: str | None, client_certificate: str | None, client_key: str | None) -> Any:
    """TLS credentials for a gRPC channel: the CA to trust (else the system's) and, for mTLS, a client pair."""
    import grpc

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(read(certificate), read(client_key), read(client_certificate))


class GrpcSender:
    """One gRPC channel per process; the request is already serialised, so no protobuf objects are built."""

    def __init__(
        self,
        signal: str,
        endpoint: str,
        *,
        insecure: bool,
        headers: Mapping[str, str],
        timeout: float,
        compression: str,
        certificate: str | None = None,
        client_certificate: str | None = None,
        client_key: str | None = None,
    ) -> None:
        import grpc

        self._grpc = grpc
        self.signal = signal
        parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        self.target = parts.netloc or endpoint
        self.timeout = timeout
        self._metadata = tuple((k.lower(), v) for k, v in headers.items()) or None
        self._compression = grpc.Compression.Gzip if compression == "gzip" else None
        # Reconnect quickly once the collector is back (gRPC's default back-off reaches 2 minutes).
        options = [
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.min_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5000),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
        if insecure:
            self._channel = grpc.insecure_channel(self.target, options=options)
        else:
            self._channel = grpc.secure_channel(
                self.target, grpc_credentials(certificate, client_certificate, client_key), options=options
            )
        method, _ = _SERVICES[signal]
        self._call = self._channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        self._closed = threading.Event()
        # The OTLP/gRPC spec's retryable codes; RESOURCE_EXHAUSTED only with a RetryInfo (below).
        self._retryable = {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.OUT_OF_RANGE,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.DATA_LOSS,
        }

    def send(self, payload: bytes, count: int) -> bool:
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while not self._closed.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                response = self._call(
                    payload, timeout=remaining, metadata=self._metadata, compression=self._compression
                )
            except self._grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else None
                hint = _retry_hint(error)
                retryable = code in self._retryable or (
                    code is self._grpc.StatusCode.RESOURCE_EXHAUSTED and hint is not None
                )
                delay = hint if hint is not None else _backoff(attempt)
                if not retryable or delay >= deadline - time.monotonic():
                    _warn(
                        self.signal,
                        str(code),
                        "meshwatch could not export %s to %s: %s %s",
                        self.signal,
                        self.target,
                        getattr(code, "name", code),
                        error.details() if hasattr(error, "details") else error,
                    )
                    return False
                attempt += 1
                if self._closed.wait(delay):
                    return False
                continue
            rejected, message = _rejected(self.signal, response)
            if rejected:
                TALLY.add(self.signal, "rejected", rejected)
                _logger.warning("the collector rejected %d %s: %s", rejected, self.signal, message)
            return True
        return False

    def close(self) -> None:
        self._closed.set()
        self._channel.close()


class HttpSender:
    """OTLP/HTTP protobuf over one kept-alive connection (stdlib ``http.client``)."""

    def __init__(
        self,
        signal: str,
        endpoint: str,
        *,
        headers: Mapping[str, str],
        timeout: float,
        compression: str,
        certificate: str | None = None,
        client_certificate: str | None = None,
        client_key: str | None = None,
    ) -> None:
        self.signal = signal
        parts = urlsplit(endpoint)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"OTLP/HTTP endpoint must be an http(s) URL, got {endpoint!r}")
        self.endpoint = endpoint
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path or "/"
        if parts.query:
            self._path += "?" + parts.query
        self.timeout = timeout
        self._gzip = compression == "gzip"
        self._headers = {"Content-Type": "application/x-protobuf", "User-Agent": "meshwatch", **headers}
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._context = None
        if self._https:
            self._context = ssl.create_default_context(cafile=certificate)
            if client_certificate:  # mTLS: the collector asks for a certificate from its client CA
                self._context.load_cert_chain(client_certificate, client_key)
        self._connection: http.client.HTTPConnection | None = None
        self._closed = threading.Event()

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._https:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=self._context
                )
            else:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        self._connection.timeout = timeout
        if self._connection.sock is not None:
            self._connection.sock.settimeout(timeout)
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def send(self, payload: bytes, count: int) -> bool:
        body = gzip.compress(payload) if self._gzip else payload
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while not self._closed.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            retry_after: float | None = None
            try:
                connection = self._connect(remaining)
                connection.request("POST", self._path, body=body, headers=self._headers)
                response = connection.getresponse()
                data = response.read()
                status = response.status
                if response.getheader("Connection", "").lower() == "close":
                    self._drop_connection()
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                status, data, error = 0, b"", exc
            else:
                error = None
            if 200 <= status < 300:
                rejected, message = _rejected(self.signal, data)
                if rejected:
                    TALLY.add(self.signal, "rejected", rejected)
                    _logger.warning("the collector rejected %d %s: %s", rejected, self.signal, message)
                return True
            if status and status not in _RETRYABLE_HTTP:
                _warn(
                    self.signal,
                    str(status),
                    "meshwatch could not export %s to %s: HTTP %s %s",
                    self.signal,
                    self.endpoint,
                    status,
                    error_text(data, response.getheader("Content-Type", "")),
                )
                return False
            if status:
                header = response.getheader("Retry-After")
                if header and header.strip().isdigit():
                    retry_after = float(header.strip())
            delay = retry_after if retry_after is not None else _backoff(attempt)
            if delay >= deadline - time.monotonic():
                _warn(
                    self.signal,
                    "unreachable",
                    "meshwatch could not export %s to %s: %s",
                    self.signal,
                    self.endpoint,
                    error or f"HTTP {status}",
                )
                return False
            attempt += 1
            if self._closed.wait(delay):
                return False
        return False

    def close(self) -> None:
        self._closed.set()
        self._drop_connection()


class Sender(Protocol):
    """What the exporters need of a transport: send one encoded request, say whether it was delivered."""

    def send(self, payload: bytes, count: int) -> bool: ...

    def close(self) -> None: ...


class OTLPExporter:
    """Encode a batch with ``encode`` and send it; the shape ``BoundedBatcher`` expects."""

    def __init__(self, encode: Callable[[Sequence[Any]], bytes], sender: Sender) -> None:
        self._encode = encode
        self._sender = sender

    def export(self, batch: Sequence[Any]) -> bool:
        return self._sender.send(self._encode(batch), len(batch))

    def shutdown(self) -> None:
        self._sender.close()


class OTLPMetricExporter(MetricExporter):
    """The SDK's metric exporter interface over meshwatch's sender: one transport for all three signals.

    The encoding is the SDK's own (``encode_metrics``: a few hundred points per interval
    cost little); the temporality and aggregation are the reader's (meshwatch's fan-out
    hands the collection over as it is).
    """

    def __init__(self, encode: Callable[[MetricsData], Any], sender: Sender) -> None:
        super().__init__()
        self._encode = encode
        self._sender = sender

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        points = sum(
            len(metric.data.data_points)
            for resource_metrics in metrics_data.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
        )
        ok = self._sender.send(self._encode(metrics_data).SerializeToString(), points)
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._sender.close()
