"""The ``otlp`` exporter: OTLP/gRPC to Jaeger or any OTLP backend, behind the durable queue.

Queued records are sent as the very bytes that came in (an identity serializer: no
decode, no re-encode). Outcomes follow the OTLP spec: ``partial_success`` counts as
rejected items (dead-lettered); UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
ABORTED, CANCELLED, OUT_OF_RANGE and DATA_LOSS are transient (``RetryInfo`` honoured);
UNAUTHENTICATED and PERMISSION_DENIED are treated as transient too (a credentials
mistake should not destroy queued data: fix it and the queue drains); the rest
(INVALID_ARGUMENT, UNIMPLEMENTED, ...) is permanent.

``tls.insecure_skip_verify: true`` is refused when the config is loaded: grpcio's Python API
(``grpc.ssl_channel_credentials``) always verifies the server's certificate chain
and has no switch to turn that off (gRPC core's TLS credentials with a custom
verifier are not exposed to Python). Give the server's CA as ``ca_file``, or use
``otlphttp``, which supports ``insecure_skip_verify``.

Config::

    exporters:
      otlp/jaeger:
        endpoint: 127.0.0.1:4317      # or http://host:port (plaintext), https://host:port (TLS)
        tls:
          insecure: true              # plaintext; else TLS, verified with the system roots or ca_file
          ca_file: /etc/meshwatch/ca.pem
          cert_file: client.pem       # with key_file: a client certificate (mTLS)
          key_file: client-key.pem
        headers: {x-tenant: demo}
        compression: none             # or gzip
        timeout: 10s
        sending_queue: {...}          # see ExporterSettings
        retry_on_failure: {...}
        batch: {max_items: 8192}
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from pydantic import Field, field_validator, model_validator

from ..batch import Batch
from ..component import Capabilities, CreateSettings, Host, Kind, make_factory
from ..queued_exporter import QueuedExporter, queued_exporter
from ..sender import ExporterSettings, PermanentError, SendResult, TransientError, tcp_reachable
from ..signals import GRPC_SERVICES, Signal
from ._otlp_common import ENDPOINT_HINT, ClientTls, partial_rejections, read_tls_file

__all__ = ["factory", "OtlpExporterConfig", "GrpcSender"]

log = logging.getLogger("meshwatch.collector.exporter")

_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}


_NO_SKIP_VERIFY = (
    "not supported by the otlp (gRPC) exporter: grpcio's Python API always verifies the server's "
    "certificate chain and has no option to skip it (gRPC core's custom-verifier TLS credentials are not "
    "exposed to Python); set tls.ca_file to the CA that signed the server's certificate, or use the "
    "otlphttp exporter, which supports insecure_skip_verify"
)


class TlsSettings(ClientTls):
    #: Plaintext gRPC (no TLS at all); an ``http://`` / ``https://`` endpoint decides by itself.
    insecure: bool = False

    @model_validator(mode="after")
    def _plaintext_has_no_files(self) -> TlsSettings:
        files = (("ca_file", self.ca_file), ("cert_file", self.cert_file), ("key_file", self.key_file))
        given = [key for key, value in files if value]
        if self.insecure and given:
            raise ValueError(f"insecure: true is plaintext gRPC, so {', '.join(given)} would be ignored: drop one")
        return self

    @field_validator("insecure_skip_verify")
    @classmethod
    def _no_skip_verify(cls, value: bool) -> bool:
        if value:
            raise ValueError(_NO_SKIP_VERIFY)
        return value


class OtlpExporterConfig(ExporterSettings):
    endpoint: str = Field(..., description=ENDPOINT_HINT)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    headers: dict[str, str] = Field(default_factory=dict)
    #: ``none`` by default: on loopback gzip only costs CPU (the OTel Collector defaults to gzip).
    compression: Literal["none", "gzip"] = "none"


def _too_large(error: grpc.RpcError) -> bool:
    """gRPC's answer to a message over the server's receive limit (Go: "grpc: received message
    larger than max"; C core: "Received message larger than max"), not a backend's back-pressure."""
    details = (error.details() or "").lower()
    return "larger than max" in details and _retry_after(error) is None


def _retry_after(error: grpc.RpcError) -> float | None:
    """Seconds from a ``RetryInfo`` in the error's trailing metadata, if the server sent one."""
    for key, value in error.trailing_metadata() or ():
        try:
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    info = error_details_pb2.RetryInfo()
                    if detail.Unpack(info):
                        return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            elif key == "google.rpc.retryinfo-bin":
                info = error_details_pb2.RetryInfo.FromString(value)
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        except DecodeError:
            continue
    return None


class GrpcSender:
    """Sends serialized Export*ServiceRequest bytes over one gRPC channel (thread-safe)."""

    thread_safe = True

    def __init__(self, config: OtlpExporterConfig, signal: Signal) -> None:
        self.config = config
        self.signal = signal
        target, secure = self._target(config)
        self.target = target
        self.secure = secure
        self._channel: grpc.Channel | None = None
        self._call: Any = None
        self._metadata = tuple((k.lower(), v) for k, v in config.headers.items())
        self._compression = grpc.Compression.Gzip if config.compression == "gzip" else grpc.Compression.NoCompression

    @staticmethod
    def _target(config: OtlpExporterConfig) -> tuple[str, bool]:
        endpoint = config.endpoint
        if endpoint.startswith("http://"):
            return endpoint.removeprefix("http://").rstrip("/"), False
        if endpoint.startswith("https://"):
            return endpoint.removeprefix("https://").rstrip("/"), True
        return endpoint, not config.tls.insecure

    def start(self, host: Host) -> None:
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.enable_retries", 0)]
        if self.secure:
            tls = self.config.tls
            where = f"otlp exporter to {self.target}"
            creds = grpc.ssl_channel_credentials(
                read_tls_file(where, "ca_file", tls.ca_file),
                read_tls_file(where, "key_file", tls.key_file),
                read_tls_file(where, "cert_file", tls.cert_file),
            )
            self._channel = grpc.secure_channel(self.target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(self.target, options=options)
        self._call = self._channel.unary_unary(f"/{GRPC_SERVICES[self.signal]}/Export")  # identity (de)serializers

    def backend_reachable(self, timeout: float) -> bool:
        """A TCP connect to the target (``host:port``; gRPC's own reconnect may still be backing off)."""
        host, _, port = self.target.rpartition(":")
        return bool(port.isdigit()) and tcp_reachable(host.strip("[]") or "127.0.0.1", int(port), timeout)

    def send(self, batch: Batch) -> SendResult:
        try:
            response = self._call(
                batch.raw, timeout=self.config.timeout, metadata=self._metadata, compression=self._compression
            )
        except grpc.RpcError as error:
            code = error.code()
            message = f"{self.target}: {code.name}: {error.details()}"
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED and _too_large(error):
                # The backend's message-size limit (gRPC's own answer, no RetryInfo): the same
                # bytes are refused every time, so retrying would stall the queue for ever.
                # Permanent: a merged send is split and retried in parts, one record alone
                # is dead-lettered.
                raise PermanentError("too_large", message) from None
            if code in _TRANSIENT:
                raise TransientError(code.name.lower(), message, retry_after=_retry_after(error)) from None
            raise PermanentError(code.name.lower(), message) from None
        return partial_rejections(self.signal, response, batch)

    def shutdown(self) -> None:
        if self._channel is not None:
            self._channel.close()


def _create(settings: CreateSettings, config: OtlpExporterConfig) -> QueuedExporter:
    assert settings.signal is not None
    return queued_exporter(settings, config, GrpcSender(config, settings.signal))


factory = make_factory(
    Kind.EXPORTER,
    "otlp",
    signals=frozenset(Signal),
    config_model=OtlpExporterConfig,
    create=_create,
    capabilities=Capabilities(mutates_data=False),
)
