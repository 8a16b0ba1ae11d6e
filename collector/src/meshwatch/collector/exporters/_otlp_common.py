"""What the OTLP exporters share: client TLS settings and reading ``partial_success`` from a response."""

from __future__ import annotations

import base64
from pathlib import Path

from google.protobuf.message import DecodeError
from pydantic import BaseModel, ConfigDict, model_validator

from ..batch import Batch
from ..sender import SendResult
from ..signals import REJECTED_FIELDS, RESPONSE_TYPES, Signal

__all__ = ["partial_rejections", "ENDPOINT_HINT", "ClientTls", "read_tls_file"]

ENDPOINT_HINT = "host:port of the OTLP backend"


class ClientTls(BaseModel):
    """Client TLS, named as the OpenTelemetry Collector's ``configtls`` client settings.

    ``ca_file`` verifies the server (default: the system roots); ``cert_file`` and
    ``key_file`` (both or neither) are the client certificate a server asking for
    mTLS verifies; ``insecure_skip_verify`` keeps TLS but accepts any server
    certificate (test setups only).
    """

    model_config = ConfigDict(extra="forbid")
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> ClientTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both (a client certificate) or neither")
        if self.insecure_skip_verify and self.ca_file:
            raise ValueError(
                "insecure_skip_verify accepts any server certificate, so ca_file would be ignored: drop one"
            )
        return self


def read_tls_file(where: str, key: str, path: str | None) -> bytes | None:
    """The bytes of a configured TLS file, or an ``OSError`` naming the setting (never the content)."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OSError(f"{where}: tls.{key} {path!r}: {exc.strerror or exc}") from None


def partial_rejections(signal: Signal, response: bytes, batch: Batch) -> SendResult:
    """``SendResult`` for a successful export whose response may carry ``partial_success``.

    OTLP does not say which items were refused, so the dead letter holds the whole
    request (replayable) with the backend's message and the refused count.
    """
    if not response:
        return SendResult()
    try:
        parsed = RESPONSE_TYPES[signal].FromString(response)
    except DecodeError:
        return SendResult()
    if not parsed.HasField("partial_success"):
        return SendResult()
    rejected = getattr(parsed.partial_success, REJECTED_FIELDS[signal])  # getattr: protobuf field, by signal
    if rejected <= 0:
        return SendResult()
    return SendResult(
        rejected=min(rejected, batch.items),
        rejected_reason="partial_success",
        dead_letters=[
            {
                "error": parsed.partial_success.error_message,
                "items": rejected,
                "request_protobuf_base64": base64.b64encode(batch.raw).decode(),
            }
        ],
    )
