"""Server-side TLS for the OTLP receivers: the ``tls`` settings and certificates that follow their files.

Settings are named as the OpenTelemetry Collector's ``configtls`` server settings::

    protocols:
      grpc:
        tls:
          cert_file: /etc/meshwatch/server.pem     # certificate chain (PEM), leaf first
          key_file: /etc/meshwatch/server-key.pem  # its private key (PEM, unencrypted)
          client_ca_file: /etc/meshwatch/ca.pem    # optional: require client certificates signed by it (mTLS)
          min_version: "1.2"                       # or "1.3"

The files are watched: on every new connection their size, mtime and inode are
compared with what was loaded (a ``stat`` of each, microseconds), and a change is
loaded before the handshake, so a rotated certificate is served from the next
connection on without a restart. A change that does not load (a key that does not
match the certificate, a half-written file) is logged once and the previous
certificate stays in service. Key material is never logged.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

__all__ = ["ServerTls", "ServerCertificates", "is_loopback", "TLS_VERSIONS"]

log = logging.getLogger("meshwatch.collector.receiver")

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class ServerTls(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: The server's certificate chain, PEM, leaf first.
    cert_file: str
    #: Its private key, PEM (unencrypted).
    key_file: str
    #: When set, clients must present a certificate signed by one of these CAs (mTLS).
    client_ca_file: str | None = None
    #: Lowest TLS version accepted.
    min_version: str = "1.2"

    @model_validator(mode="before")
    @classmethod
    def _no_ca_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and "ca_file" in data:
            raise ValueError(
                "ca_file is a client setting; a receiver verifies client certificates with client_ca_file "
                "(which also makes them required)"
            )
        return data

    @field_validator("min_version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> str:
        text = f"{value:.1f}" if isinstance(value, float) else str(value).strip()
        text = text.removeprefix("TLS").removeprefix("v").strip()
        if text in ("1.0", "1.1"):
            raise ValueError(f"TLS {text} is deprecated (RFC 8996) and not offered; use '1.2' or '1.3'")
        if text not in TLS_VERSIONS:
            raise ValueError("use '1.2' or '1.3'")
        return text


def is_loopback(endpoint: str) -> bool:
    """True when ``host:port`` listens on loopback only (``0.0.0.0``, ``::`` and host names do not)."""
    host = endpoint.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _signature(paths: list[str]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class ServerCertificates:
    """The receiver's certificate, key and client CAs, reloaded when their files change.

    ``poll()`` (cheap; called on each new connection) returns True when a changed set
    of files was loaded. ``files`` holds the PEM bytes last loaded (for gRPC) and
    ``context`` an ``ssl.SSLContext`` built from them (for HTTP, offering ``alpn``).
    """

    def __init__(self, tls: ServerTls, receiver: str, setting: str, alpn: list[str] | None = None) -> None:
        self.tls = tls
        self.where = f"{receiver}: {setting}"  # for the log; a start-up error names the setting only
        self.alpn = alpn
        self.paths = [tls.cert_file, tls.key_file] + ([tls.client_ca_file] if tls.client_ca_file else [])
        self._lock = threading.Lock()
        self._seen: tuple[Any, ...] | None = None
        self.files: tuple[bytes, bytes, bytes | None] = (b"", b"", None)
        self.context: ssl.SSLContext | None = None
        try:
            self._load()
        except (OSError, ValueError) as exc:
            raise OSError(f"{setting}: cannot load the TLS certificate: {exc}") from None

    @property
    def require_client_cert(self) -> bool:
        return self.tls.client_ca_file is not None

    def server_context(self) -> ssl.SSLContext:
        """A server ``SSLContext`` with the files as they are now (raises if they do not load)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = TLS_VERSIONS[self.tls.min_version]
        # No TLS 1.3 session tickets: with them a request on a new connection from Python's
        # http.client to the HTTP receiver took 24 ms after the handshake instead of 3 ms
        # (bench/collector/tls.py: 36 vs 230 new connections/s on 2 busy cores); nothing here resumes sessions.
        context.num_tickets = 0
        if self.alpn:
            context.set_alpn_protocols(self.alpn)
        try:
            context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        except ssl.SSLError as exc:
            # OpenSSL's reason only ("KEY_VALUES_MISMATCH", "PEM lib"): never the file's content.
            raise ValueError(
                f"cert_file {self.tls.cert_file!r} / key_file {self.tls.key_file!r}: {exc.reason or exc}"
            ) from None
        if self.tls.client_ca_file:
            try:
                context.load_verify_locations(cafile=self.tls.client_ca_file)
            except ssl.SSLError as exc:
                raise ValueError(f"client_ca_file {self.tls.client_ca_file!r}: {exc.reason or exc}") from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _load(self) -> None:
        before = _signature(self.paths)
        context = self.server_context()
        ca = self.tls.client_ca_file
        files = (
            _read(self.tls.cert_file),
            _read(self.tls.key_file),
            _read(ca) if ca else None,
        )
        if _signature(self.paths) != before:
            raise ValueError("the files changed while they were read")
        self.context = context
        self.files = files
        self._seen = before

    def poll(self) -> bool:
        """Load the files again if they changed since the last look; True if a new set is in service."""
        try:
            now = _signature(self.paths)
        except OSError as exc:
            now = ("missing", str(exc))
        if now == self._seen:
            return False
        with self._lock:
            if now == self._seen:
                return False
            try:
                self._load()
            except (OSError, ValueError) as exc:
                # Once per change of the files: the previous certificate stays in service.
                self._seen = now
                log.warning(
                    "%s: the changed TLS files do not load, keeping the previous certificate: %s", self.where, exc
                )
                return False
        log.info("%s: TLS certificate reloaded from %s", self.where, self.tls.cert_file)
        return True


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()
