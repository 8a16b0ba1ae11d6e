"""Build the OTLP (or console) exporter for one signal from the settings.

Imports happen inside the factories: the gRPC stack is only loaded when gRPC is
chosen, and the HTTP one only for ``http/protobuf``. Factories are called by the
batch worker in the process that exports, so a forked worker connects anew.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._config import Settings

__all__ = ["exporter_factory", "metric_exporter_factory"]


def _common(settings: Settings, signal: str) -> dict[str, Any]:
    return {
        "endpoint": settings.endpoint_for(signal),
        "headers": dict(settings.headers) or None,
        "timeout": settings.export_timeout,
    }


def _grpc_kwargs(settings: Settings, signal: str) -> dict[str, Any]:
    # Metrics use the official exporters: a few hundred points per interval cost little.
    from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression

    kwargs = _common(settings, signal)
    endpoint = kwargs["endpoint"]
    insecure = settings.insecure
    if insecure is None:
        insecure = not endpoint.startswith("https://")
    kwargs["insecure"] = insecure
    if not insecure:  # the same TLS settings as traces and logs (the exporter's own env reading is bypassed)
        from ._transport import grpc_credentials

        kwargs["credentials"] = grpc_credentials(settings.certificate, settings.client_certificate, settings.client_key)
    kwargs["compression"] = Compression.Gzip if settings.compression == "gzip" else Compression.NoCompression
    return kwargs


def _http_kwargs(settings: Settings, signal: str) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.proto.http import Compression

    kwargs = _common(settings, signal)
    kwargs["certificate_file"] = settings.certificate
    kwargs["client_certificate_file"] = settings.client_certificate
    kwargs["client_key_file"] = settings.client_key
    kwargs["compression"] = Compression.Gzip if settings.compression == "gzip" else Compression.NoCompression
    return kwargs


def exporter_factory(settings: Settings, signal: str, kind: str) -> Callable[[], Any]:
    """A zero-argument callable building the span (``traces``) or log (``logs``) exporter.

    OTLP uses meshwatch's own encoder and senders (``_otlp``, ``_transport``): the
    same bytes on the wire as the official exporters, for a fraction of the CPU.
    """
    if kind == "console":
        return lambda: _ConsoleExporter(signal)
    if kind != "otlp":
        raise ValueError(f"unknown {signal} exporter {kind!r}; use otlp, console or none")
    protocol = settings.protocol_for(signal)
    # Imported here, on init()'s thread, not in build(): build() runs on an export thread,
    # and a worker forked while that thread was importing inherits a half-imported module.
    from ._sdk_fence import sdk_parts
    from ._transport import GrpcSender, HttpSender, OTLPExporter

    parts = sdk_parts(fast_path=settings.sdk_fast_path)  # meshwatch's encoder where checked, else the SDK's
    encode = parts.encode_spans if signal == "traces" else parts.encode_logs

    def build() -> Any:
        endpoint = settings.endpoint_for(signal)
        sender: GrpcSender | HttpSender
        if protocol == "grpc":
            insecure = settings.insecure if settings.insecure is not None else not endpoint.startswith("https://")
            sender = GrpcSender(
                signal,
                endpoint,
                insecure=insecure,
                headers=settings.headers,
                timeout=settings.export_timeout,
                compression=settings.compression,
                certificate=settings.certificate,
                client_certificate=settings.client_certificate,
                client_key=settings.client_key,
            )
        else:
            sender = HttpSender(
                signal,
                endpoint,
                headers=settings.headers,
                timeout=settings.export_timeout,
                compression=settings.compression,
                certificate=settings.certificate,
                client_certificate=settings.client_certificate,
                client_key=settings.client_key,
            )
        return OTLPExporter(encode, sender)

    return build


def metric_exporter_factory(settings: Settings, kind: str) -> Callable[[], Any]:
    """A zero-argument callable building the push metric exporter (cumulative temporality)."""
    if kind == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return lambda: ConsoleMetricExporter(out=sys.stderr)
    if kind != "otlp":
        raise ValueError(f"unknown metrics exporter {kind!r}; use otlp, prometheus, console or none")
    protocol = settings.protocol_for("metrics")
    # The exporter's module is imported now, on init()'s thread: build() runs on the metric
    # reader's thread, and a gunicorn worker forked while that thread was importing got a
    # half-initialised module ("partially initialized module ... OTLPMetricExporter") and
    # never exported a metric.
    exporter_class: Any
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as exporter_class

        kwargs = _grpc_kwargs
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as exporter_class

        kwargs = _http_kwargs  # its Compression comes from the package just imported

    def build() -> Any:
        return exporter_class(**kwargs(settings, "metrics"))

    return build


class _ConsoleExporter:
    """Spans or log records as one JSON document each, on stderr (stdout carries the JSON logs)."""

    def __init__(self, signal: str) -> None:
        self.signal = signal

    def export(self, batch: Sequence[Any]) -> bool:
        for item in batch:
            to_json = getattr(item, "to_json", None)
            sys.stderr.write((to_json(indent=None) if to_json else repr(item)) + "\n")
        sys.stderr.flush()
        return True

    def shutdown(self) -> None:
        return None
