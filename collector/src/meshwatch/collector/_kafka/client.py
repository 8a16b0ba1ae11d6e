"""Connection settings of the kafka exporter and receiver, named as contrib's ``configkafka``.

``client_config`` turns them into librdkafka properties (confluent-kafka's config dict).
Keys of the Go collector that only tune franz-go itself (``protocol_version``,
``conn_idle_timeout``, ``resolve_canonical_bootstrap_servers_only``, ``metadata.full``) are
accepted so a contrib config loads unchanged; librdkafka negotiates versions on its own.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from ..duration import Duration
from ..model import StrictModel

__all__ = ["ClientSettings", "SaslSettings", "client_config"]


class KafkaTls(StrictModel):
    """``tls``: present means TLS (unless ``insecure: true``), as configtls' client settings."""

    insecure: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> KafkaTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both (a client certificate) or neither")
        return self


class SaslSettings(StrictModel):
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username: str
    password: SecretStr
    version: int = Field(0, ge=0, le=1)  # accepted: librdkafka always uses the current handshake


class AuthSettings(StrictModel):
    sasl: SaslSettings | None = None


class MetadataSettings(StrictModel):
    full: bool = False  # accepted, no effect (as in contrib since franz-go)
    #: How often topic metadata (partition counts, leaders) is refreshed in the background.
    refresh_interval: Duration = Field(600.0, gt=0)


class ClientSettings(StrictModel):
    brokers: list[str] = Field(default_factory=lambda: ["localhost:9092"], min_length=1)
    client_id: str = "otel-collector"
    protocol_version: str | None = None
    resolve_canonical_bootstrap_servers_only: bool = False
    conn_idle_timeout: Duration | None = None
    tls: KafkaTls | None = None
    auth: AuthSettings = Field(default_factory=AuthSettings)
    metadata: MetadataSettings = Field(default_factory=MetadataSettings)


def client_config(settings: ClientSettings) -> dict[str, Any]:
    """librdkafka properties shared by producer and consumer."""
    tls = settings.tls is not None and not settings.tls.insecure
    sasl = settings.auth.sasl
    protocol = {(False, False): "plaintext", (True, False): "ssl", (False, True): "sasl_plaintext"}.get(
        (tls, sasl is not None), "sasl_ssl"
    )
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(settings.brokers),
        "client.id": settings.client_id,
        "security.protocol": protocol,
        "topic.metadata.refresh.interval.ms": int(settings.metadata.refresh_interval * 1000),
    }
    if tls and settings.tls is not None:
        if settings.tls.ca_file:
            config["ssl.ca.location"] = settings.tls.ca_file
        if settings.tls.cert_file and settings.tls.key_file:
            config["ssl.certificate.location"] = settings.tls.cert_file
            config["ssl.key.location"] = settings.tls.key_file
        if settings.tls.insecure_skip_verify:
            config["enable.ssl.certificate.verification"] = False
    if sasl is not None:
        config["sasl.mechanism"] = sasl.mechanism
        config["sasl.username"] = sasl.username
        config["sasl.password"] = sasl.password.get_secret_value()
    if settings.resolve_canonical_bootstrap_servers_only:
        config["client.dns.lookup"] = "resolve_canonical_bootstrap_servers_only"
    return config
