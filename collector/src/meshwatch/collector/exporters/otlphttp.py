"""The ``otlphttp`` exporter: OTLP/HTTP with protobuf bodies, behind the durable queue.

Per the OTLP spec: 200 (with optional ``partial_success``) is success; 429, 502, 503
and 504 are transient (``Retry-After`` honoured, in seconds or as an HTTP date); a
connection error or timeout is transient; any other status (400, 404, 413, ...) is
permanent and the batch goes to the dead-letter file.

Config::

    exporters:
      otlphttp:
        endpoint: http://127.0.0.1:4318     # /v1/traces, /v1/metrics, /v1/logs are appended
        traces_endpoint: null               # full URL, overrides endpoint for traces (same for metrics/logs)
        headers: {}
        compression: none                   # or gzip
        tls:
          ca_file: null                     # verify the server with this CA (default: the system roots)
          cert_file: null                   # with key_file: a client certificate (mTLS)
          key_file: null
          insecure_skip_verify: false       # TLS without verifying the server (test setups only)

TLS files are loaded at start, so a missing or mismatched file stops the collector
with a message naming the setting instead of failing every send.
"""

from __future__ import annotations

import email.utils
import ssl
import time
import zlib
from typing import Any, Literal
from urllib.parse import urlsplit

import urllib3
from pydantic import Field

from ..batch import Batch
from ..component import Capabilities, CreateSettings, Host, Kind, make_factory
from ..queued_exporter import QueuedExporter, queued_exporter
from ..sender import ExporterSettings, PermanentError, SendResult, TransientError, tcp_reachable
from ..signals import Signal
from ._otlp_common import ClientTls, partial_rejections

__all__ = ["factory", "OtlpHttpExporterConfig", "HttpSender"]

_TRANSIENT_STATUS = {429, 502, 503, 504}


HttpTls = ClientTls


class OtlpHttpExporterConfig(ExporterSettings):
    endpoint: str | None = None
    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    logs_endpoint: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    compression: Literal["none", "gzip"] = "none"
    tls: HttpTls = Field(default_factory=HttpTls)

    def url_for(self, signal: Signal) -> str:
        explicit = {
            Signal.TRACES: self.traces_endpoint,
            Signal.METRICS: self.metrics_endpoint,
            Signal.LOGS: self.logs_endpoint,
        }[signal]
        if explicit:
            return explicit
        if not self.endpoint:
            raise ValueError(f"set endpoint or {signal.value}_endpoint")
        return f"{self.endpoint.rstrip('/')}/v1/{signal.value}"


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds or as an HTTP date → seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpSender:
    thread_safe = True

    def __init__(self, config: OtlpHttpExporterConfig, signal: Signal) -> None:
        self.config = config
        self.signal = signal
        self.url = config.url_for(signal)
        self._pool: urllib3.PoolManager | None = None
        self._headers = {"Content-Type": "application/x-protobuf", **config.headers}
        if config.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"

    def backend_reachable(self, timeout: float) -> bool:
        """A TCP connect to the URL's host and port."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return bool(parts.hostname) and tcp_reachable(parts.hostname or "", port, timeout)

    def start(self, host: Host) -> None:
        tls: dict[str, Any] = {}
        if self.url.startswith("https://"):
            tls["ssl_context"] = self._ssl_context()
        self._pool = urllib3.PoolManager(maxsize=self.config.sending_queue.num_consumers, retries=False, **tls)

    def _ssl_context(self) -> ssl.SSLContext:
        """The client context, built once at start: a bad file fails here, naming the setting."""
        tls = self.config.tls
        where = f"otlphttp exporter to {redact_url(self.url)}"
        try:
            context = ssl.create_default_context(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"{where}: tls.ca_file {tls.ca_file!r}: {_ssl_reason(exc)}") from None
        if tls.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tls.cert_file and tls.key_file:
            try:
                context.load_cert_chain(tls.cert_file, tls.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise OSError(
                    f"{where}: tls.cert_file {tls.cert_file!r} / tls.key_file {tls.key_file!r}: {_ssl_reason(exc)}"
                ) from None
        return context

    def send(self, batch: Batch) -> SendResult:
        assert self._pool is not None
        body = batch.raw
        if self.config.compression == "gzip":
            compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            body = compressor.compress(body) + compressor.flush()
        try:
            response = self._pool.request(
                "POST", self.url, body=body, headers=self._headers, timeout=self.config.timeout, preload_content=True
            )
        except urllib3.exceptions.HTTPError as exc:
            raise TransientError("unavailable", f"{self.url}: {exc}") from None
        status = response.status
        if 200 <= status < 300:
            return partial_rejections(self.signal, response.data, batch)
        text = response.data[:300].decode("utf-8", "replace")
        message = f"{self.url}: HTTP {status}: {text}"
        if status in _TRANSIENT_STATUS:
            raise TransientError(
                f"http_{status}", message, retry_after=parse_retry_after(response.headers.get("Retry-After"))
            )
        raise PermanentError(f"http_{status}", message)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.clear()


def _ssl_reason(exc: BaseException) -> str:
    """OpenSSL's reason or the OS error, never a file's content."""
    # getattr: ssl.SSLError has ``reason``, OSError ``strerror``; other exceptions neither.
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


def redact_url(url: str) -> str:
    """``url`` without ``user:password@`` and without its query string."""
    parts = urllib3.util.parse_url(url)
    return parts._replace(auth=None, query=None, fragment=None).url


def _create(settings: CreateSettings, config: OtlpHttpExporterConfig) -> QueuedExporter:
    assert settings.signal is not None
    return queued_exporter(settings, config, HttpSender(config, settings.signal))


factory = make_factory(
    Kind.EXPORTER,
    "otlphttp",
    signals=frozenset(Signal),
    config_model=OtlpHttpExporterConfig,
    create=_create,
    capabilities=Capabilities(mutates_data=False),
)
