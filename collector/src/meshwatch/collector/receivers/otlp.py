"""The ``otlp`` receiver: OTLP over gRPC (default 127.0.0.1:4317) and HTTP (127.0.0.1:4318).

Config (names as the OpenTelemetry Collector's where they exist)::

    receivers:
      otlp:
        protocols:
          grpc: {endpoint: 127.0.0.1:4317}      # omit a protocol to turn it off
          http:
            endpoint: 0.0.0.0:4318
            tls:                                # per protocol, as the OpenTelemetry Collector's
              cert_file: /etc/meshwatch/server.pem
              key_file: /etc/meshwatch/server-key.pem
              client_ca_file: /etc/meshwatch/ca.pem   # optional: mTLS
              min_version: "1.2"                # or "1.3"
        auth: {bearer_token: ${env:MESHWATCH_OTLP_TOKEN}}   # optional
        max_request_body_size: 16777216         # bytes, after decompression

With no ``protocols`` key both run on their defaults. A protocol written with an
empty value (``grpc:``) runs on its defaults. TLS files are re-read when they change
(see ``_tls``). A protocol listening beyond loopback without ``tls`` is logged as a
warning at start: its data and bearer token would cross the network in clear text.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field, SecretStr, model_validator

from ..component import Capabilities, ComponentId, Consumer, CreateSettings, Host, Kind, make_factory
from ..duration import Duration
from ..model import StrictModel
from ..signals import Signal
from ._grpc import GrpcTransport
from ._http import HttpTransport
from ._ingest import Ingest
from ._tls import ServerCertificates, ServerTls, is_loopback

__all__ = ["factory", "OtlpReceiverConfig"]

log = logging.getLogger("meshwatch.collector.receiver")


class KeepaliveServerParameters(StrictModel):
    """gRPC's server keepalive and connection-age settings, named as the OTel Collector's configgrpc.

    Unset means gRPC's own default. ``max_connection_age`` makes long-lived clients reconnect
    (so a load balancer in front spreads them again); ``max_connection_idle`` closes idle ones.
    """

    max_connection_idle: Duration | None = Field(None, gt=0)
    max_connection_age: Duration | None = Field(None, gt=0)
    max_connection_age_grace: Duration | None = Field(None, gt=0)
    #: Ping a client after this long without activity, and drop it if no answer in ``timeout``.
    time: Duration | None = Field(None, gt=0)
    timeout: Duration | None = Field(None, gt=0)


class KeepaliveEnforcementPolicy(StrictModel):
    #: Clients pinging more often than this are told to go away (gRPC's default: 5 min).
    min_time: Duration | None = Field(None, gt=0)
    permit_without_stream: bool = False


class GrpcKeepalive(StrictModel):
    server_parameters: KeepaliveServerParameters = Field(default_factory=KeepaliveServerParameters)
    enforcement_policy: KeepaliveEnforcementPolicy = Field(default_factory=KeepaliveEnforcementPolicy)

    def channel_args(self) -> list[tuple[str, int]]:
        """The gRPC core channel arguments these settings stand for (milliseconds)."""
        server, policy = self.server_parameters, self.enforcement_policy
        args = {
            "grpc.max_connection_idle_ms": server.max_connection_idle,
            "grpc.max_connection_age_ms": server.max_connection_age,
            "grpc.max_connection_age_grace_ms": server.max_connection_age_grace,
            "grpc.keepalive_time_ms": server.time,
            "grpc.keepalive_timeout_ms": server.timeout,
            "grpc.http2.min_ping_interval_without_data_ms": policy.min_time,
        }
        out = [(name, int(seconds * 1000)) for name, seconds in args.items() if seconds is not None]
        if policy.permit_without_stream:
            out.append(("grpc.keepalive_permit_without_calls", 1))
        return out


class GrpcProtocol(StrictModel):
    endpoint: str = "127.0.0.1:4317"
    #: Threads serving requests (each waits for its batch to be durable before answering).
    max_workers: int = Field(16, ge=1, le=256)
    #: Requests served or waiting for a thread; more are refused with RESOURCE_EXHAUSTED +
    #: RetryInfo (counted as ``concurrency_limit``). Default: 8 per worker.
    max_concurrent_requests: int | None = Field(None, ge=1)
    tls: ServerTls | None = None
    keepalive: GrpcKeepalive = Field(default_factory=GrpcKeepalive)


class HttpProtocol(StrictModel):
    endpoint: str = "127.0.0.1:4318"
    traces_url_path: str = "/v1/traces"
    metrics_url_path: str = "/v1/metrics"
    logs_url_path: str = "/v1/logs"
    max_workers: int = Field(16, ge=1, le=256)
    #: Requests in progress; more get 429 + Retry-After (``concurrency_limit``). Default: 8 per worker.
    max_concurrent_requests: int | None = Field(None, ge=1)
    #: A connection whose request line and headers take longer is closed (counted ``timeout``).
    read_header_timeout: Duration = Field(10.0, gt=0)
    #: A request body that takes longer to arrive is answered 408 (counted ``timeout``).
    read_timeout: Duration = Field(60.0, gt=0)
    #: Open connections; more are answered 503 + Retry-After at once and closed (counted
    #: ``connection_limit``). Default: half the process's open-file limit.
    max_connections: int | None = Field(None, ge=1)
    tls: ServerTls | None = None


class Protocols(StrictModel):
    grpc: GrpcProtocol | None = None
    http: HttpProtocol | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: ({} if value is None else value) for key, value in data.items()}
        return data


class Auth(StrictModel):
    #: Clients must send ``Authorization: Bearer <token>``; never logged.
    bearer_token: SecretStr | None = None


class OtlpReceiverConfig(StrictModel):
    protocols: Protocols = Field(default_factory=lambda: Protocols(grpc=GrpcProtocol(), http=HttpProtocol()))
    auth: Auth = Field(default_factory=Auth)
    max_request_body_size: int = Field(16 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _one_protocol(self) -> OtlpReceiverConfig:
        if self.protocols.grpc is None and self.protocols.http is None:
            raise ValueError("protocols: enable grpc, http or both")
        return self


class OtlpReceiver:
    def __init__(self, settings: CreateSettings, config: OtlpReceiverConfig, consumers: dict[Signal, Consumer]) -> None:
        self.id: ComponentId = settings.id
        self.config = config
        self.consumers = consumers
        self.telemetry = settings.telemetry
        self.grpc: GrpcTransport | None = None
        self.http: HttpTransport | None = None

    def start(self, host: Host) -> None:
        ingest = Ingest(str(self.id), self.consumers, self.telemetry)
        served = (("grpc", self.config.protocols.grpc), ("http", self.config.protocols.http))
        transports = [name for name, protocol in served if protocol is not None]
        self.telemetry.known_receiver(str(self.id), transports, [signal.value for signal in self.consumers])
        token = self.config.auth.bearer_token.get_secret_value() if self.config.auth.bearer_token else None
        size = self.config.max_request_body_size
        protocols = self.config.protocols
        self._warn_plaintext()
        if protocols.grpc is not None:
            grpc_tls = protocols.grpc.tls
            self.grpc = GrpcTransport(
                ingest,
                protocols.grpc.endpoint,
                max_request_bytes=size,
                bearer_token=token,
                max_workers=protocols.grpc.max_workers,
                max_concurrent_requests=protocols.grpc.max_concurrent_requests,
                channel_args=protocols.grpc.keepalive.channel_args(),
                tls=ServerCertificates(grpc_tls, str(self.id), "protocols.grpc.tls") if grpc_tls else None,
            )
            self.grpc.start()
            log.info("%s: OTLP/gRPC on %s%s", self.id, protocols.grpc.endpoint, _tls_note(grpc_tls))
        if protocols.http is not None:
            paths = {
                Signal.TRACES: protocols.http.traces_url_path,
                Signal.METRICS: protocols.http.metrics_url_path,
                Signal.LOGS: protocols.http.logs_url_path,
            }
            http_tls = protocols.http.tls
            try:
                http_certs = (
                    ServerCertificates(http_tls, str(self.id), "protocols.http.tls", alpn=["http/1.1"])
                    if http_tls
                    else None
                )
            except OSError:
                if self.grpc is not None:
                    self.grpc.stop(0)
                raise
            self.http = HttpTransport(
                ingest,
                protocols.http.endpoint,
                max_request_bytes=size,
                bearer_token=token,
                paths=paths,
                max_workers=protocols.http.max_workers,
                max_concurrent_requests=protocols.http.max_concurrent_requests,
                read_header_timeout=protocols.http.read_header_timeout,
                read_timeout=protocols.http.read_timeout,
                max_connections=protocols.http.max_connections,
                on_fatal=lambda exc: host.report_fatal(self.id, exc),
                tls=http_certs,
            )
            try:
                self.http.start()
            except OSError:
                if self.grpc is not None:
                    self.grpc.stop(0)
                raise
            log.info("%s: OTLP/HTTP on %s%s", self.id, protocols.http.endpoint, _tls_note(http_tls))

    def _warn_plaintext(self) -> None:
        """One warning line for the protocols that listen beyond loopback without TLS."""
        exposed = [
            f"OTLP/{name} on {proto.endpoint}"
            for name, proto in (("gRPC", self.config.protocols.grpc), ("HTTP", self.config.protocols.http))
            if proto is not None and proto.tls is None and not is_loopback(proto.endpoint)
        ]
        if exposed:
            log.warning(
                "%s: %s reachable beyond loopback without TLS: telemetry%s crosses the network in clear text; "
                "set protocols.<grpc|http>.tls (cert_file, key_file) or listen on 127.0.0.1",
                self.id,
                " and ".join(exposed),
                " and the bearer token" if self.config.auth.bearer_token else "",
            )

    def shutdown(self, timeout: float) -> None:
        """Stop accepting; requests in flight finish (their batches are durable or refused)."""
        grace = min(timeout, 5.0)
        if self.grpc is not None:
            self.grpc.stop(grace)
        if self.http is not None:
            self.http.stop(grace)


def _tls_note(tls: ServerTls | None) -> str:
    if tls is None:
        return ""
    return f" (TLS >= {tls.min_version}{', client certificates required' if tls.client_ca_file else ''})"


factory = make_factory(
    Kind.RECEIVER,
    "otlp",
    signals=frozenset(Signal),
    config_model=OtlpReceiverConfig,
    create=OtlpReceiver,
    capabilities=Capabilities(mutates_data=False),
)
