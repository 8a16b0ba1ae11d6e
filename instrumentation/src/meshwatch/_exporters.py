"""Build the OTLP (or console) exporter for one signal from the settings.

All three signals go through the same senders (``_transport``), built by
``build_sender`` from the same settings, so a TLS file, a header, the timeout or
the compression reaches metrics exactly as it reaches traces and logs. Imports
happen inside the factories: the gRPC stack is only loaded when gRPC is chosen. Factories are called by the
batch worker in the process that exports, so a forked worker connects anew.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._config import Settings

__all__ = ["FanOutExporter", "build_sender", "exporter_factory", "metric_exporter_factory"]


def build_sender(settings: Settings, signal: str) -> Any:
    """The OTLP sender of one signal: every export setting (endpoint, protocol, TLS files, headers,
    timeout, compression) is read here, once, for traces, metrics and logs alike."""
    from ._transport import GrpcSender, HttpSender

    endpoint = settings.endpoint_for(signal)
    tls = {
        "certificate": settings.certificate,
        "client_certificate": settings.client_certificate,
        "client_key": settings.client_key,
    }
    common = {"headers": settings.headers, "timeout": settings.export_timeout, "compression": settings.compression}
    if settings.protocol_for(signal) == "grpc":
        insecure = settings.insecure if settings.insecure is not None else not endpoint.startswith("https://")
        return GrpcSender(signal, endpoint, insecure=insecure, **common, **tls)
    return HttpSender(signal, endpoint, **common, **tls)


def _check_kinds(signal: str, kinds: Sequence[str], known: Sequence[str]) -> list[str]:
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ValueError(f"unknown {signal} exporter {unknown[0]!r}; use {', '.join(known)} or none")
    return list(dict.fromkeys(kinds))  # otlp,otlp is one exporter


def exporter_factory(settings: Settings, signal: str, kinds: Sequence[str]) -> Callable[[], Any]:
    """A zero-argument callable building the span (``traces``) or log (``logs``) exporter.

    Every kind named (``otlp,console``) is honoured: the batch goes to each. OTLP uses
    meshwatch's own encoder (where the fence checked it) and senders (``_transport``):
    the same bytes on the wire as the official exporters, for a fraction of the CPU.
    """
    kinds = _check_kinds(signal, kinds, ("otlp", "console"))
    # Imported here, on init()'s thread, not in build(): build() runs on an export thread,
    # and a worker forked while that thread was importing inherits a half-imported module.
    from ._sdk_fence import sdk_parts
    from ._transport import OTLPExporter

    parts = sdk_parts(fast_path=settings.sdk_fast_path)  # meshwatch's encoder where checked, else the SDK's
    encode = parts.encode_spans if signal == "traces" else parts.encode_logs

    def build_one(kind: str) -> Any:
        if kind == "console":
            return _ConsoleExporter(signal)
        return OTLPExporter(encode, build_sender(settings, signal))

    if len(kinds) == 1:
        return lambda: build_one(kinds[0])
    return lambda: FanOutExporter([build_one(kind) for kind in kinds])


def metric_exporter_factory(settings: Settings, kind: str) -> Callable[[], Any]:
    """A zero-argument callable building the push metric exporter (cumulative temporality)."""
    if kind == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return lambda: ConsoleMetricExporter(out=sys.stderr)
    if kind != "otlp":
        raise ValueError(f"unknown metrics exporter {kind!r}; use otlp, prometheus, console or none")
    # Imported now, on init()'s thread: build() runs on the metric reader's thread, and a
    # gunicorn worker forked while that thread was importing got a half-initialised module.
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

    from ._transport import OTLPMetricExporter

    return lambda: OTLPMetricExporter(encode_metrics, build_sender(settings, "metrics"))


class FanOutExporter:
    """Spans or log records to several exporters (``OTEL_TRACES_EXPORTER=otlp,console``); fails if any fails."""

    def __init__(self, exporters: Sequence[Any]) -> None:
        self.exporters = list(exporters)

    def export(self, batch: Sequence[Any]) -> bool:
        results = [exporter.export(batch) for exporter in self.exporters]  # each one, even after a failure
        return all(results)  # meshwatch's exporters answer a bool

    def shutdown(self) -> None:
        for exporter in self.exporters:
            exporter.shutdown()


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
