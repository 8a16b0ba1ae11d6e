"""Every setting of meshwatch, declared once: argument name, environment variables, default, type.

A setting comes from the ``init()`` argument of the same name, else the first of
its environment variables that is set (the standard ``OTEL_*`` one where
OpenTelemetry defines one, then ``MESHWATCH_*``), else its default. The table of
settings in docs/instrumentation.md is generated from ``PARAMS`` (``python -m
meshwatch._config``), and a test fails when it drifts from the code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["PARAMS", "ConfigError", "ConfigParam", "Settings", "resolve"]


class ConfigError(ValueError):
    """A setting has a value meshwatch cannot use; the message names the setting and its source."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _mapping(raw: str) -> dict[str, str]:
    """``key=value,key2=value2`` as OTEL_RESOURCE_ATTRIBUTES and OTEL_EXPORTER_OTLP_HEADERS spell it."""
    from urllib.parse import unquote

    result: dict[str, str] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {part.strip()!r}")
        result[unquote(key.strip())] = unquote(value.strip())
    return result


def _float(raw: str) -> float:
    return float(raw)


def _int(raw: str) -> int:
    return int(raw)


def _str(raw: str) -> str:
    return raw.strip()


@dataclass(frozen=True)
class ConfigParam:
    """One setting: where it is read from and how its text becomes a value."""

    env_vars: tuple[str, ...]
    default: Any
    parse: Callable[[str], Any] = _str
    doc: str = ""
    #: True for values that must never be printed (headers carry API keys).
    secret: bool = False
    #: Environment values are divided by this (OTEL_* durations are milliseconds, meshwatch's are seconds).
    env_scale: float = 1.0


DEFAULT_REDACT_PATTERNS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api[-_.]?key",
    "authorization",
    "auth[-_.]?header",
    "cookie",
    "session[-_.]?id",
    "credential",
    "private[-_.]?key",
    "access[-_.]?key",
    "credit[-_.]?card",
    "card[-_.]?number",
    "cvv",
    "iban",
    "ssn",
)

#: Declared once. Order is the order of the table in docs/instrumentation.md.
PARAMS: dict[str, ConfigParam] = {
    "service_name": ConfigParam(
        ("OTEL_SERVICE_NAME",), None, doc="service.name; default: from OTEL_RESOURCE_ATTRIBUTES, else the program"
    ),
    "service_version": ConfigParam(
        ("MESHWATCH_SERVICE_VERSION",), None, doc="service.version; default: the installed version of the service"
    ),
    "service_namespace": ConfigParam(("MESHWATCH_SERVICE_NAMESPACE",), None, doc="service.namespace"),
    "environment": ConfigParam(
        ("MESHWATCH_ENVIRONMENT",), None, doc="deployment.environment.name (and deployment.environment)"
    ),
    "resource_attributes": ConfigParam(
        ("OTEL_RESOURCE_ATTRIBUTES",), {}, _mapping, doc="extra resource attributes, key=value,…"
    ),
    "endpoint": ConfigParam(
        ("OTEL_EXPORTER_OTLP_ENDPOINT",),
        None,
        doc="collector URL; default http://localhost:4317 (grpc) or http://localhost:4318 (http/protobuf)",
    ),
    "traces_endpoint": ConfigParam(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",), None, doc="traces only (full URL)"),
    "metrics_endpoint": ConfigParam(("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",), None, doc="metrics only (full URL)"),
    "logs_endpoint": ConfigParam(("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",), None, doc="logs only (full URL)"),
    "protocol": ConfigParam(("OTEL_EXPORTER_OTLP_PROTOCOL",), "grpc", doc="grpc or http/protobuf"),
    "traces_protocol": ConfigParam(("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",), None, doc="per signal; default: protocol"),
    "metrics_protocol": ConfigParam(("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",), None, doc="per signal"),
    "logs_protocol": ConfigParam(("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",), None, doc="per signal"),
    "headers": ConfigParam(
        ("OTEL_EXPORTER_OTLP_HEADERS",), {}, _mapping, doc="headers on every export (never logged)", secret=True
    ),
    "certificate": ConfigParam(
        ("OTEL_EXPORTER_OTLP_CERTIFICATE",), None, doc="CA file to verify the collector's TLS certificate"
    ),
    "client_certificate": ConfigParam(
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",),
        None,
        doc="client certificate (PEM) for an mTLS collector",
    ),
    "client_key": ConfigParam(
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY",), None, doc="the client certificate's private key (PEM)"
    ),
    "insecure": ConfigParam(("OTEL_EXPORTER_OTLP_INSECURE",), None, _bool, doc="plain-text gRPC; default: from URL"),
    "compression": ConfigParam(("OTEL_EXPORTER_OTLP_COMPRESSION",), "none", doc="none or gzip"),
    "export_timeout": ConfigParam(
        ("OTEL_EXPORTER_OTLP_TIMEOUT",), 10.0, _float, doc="seconds per export call (env: ms)", env_scale=1000
    ),
    "traces_exporter": ConfigParam(
        ("OTEL_TRACES_EXPORTER",), ("otlp",), _list, doc="any of otlp, console (each gets every span); or none"
    ),
    "metrics_exporter": ConfigParam(
        ("OTEL_METRICS_EXPORTER",), ("otlp",), _list, doc="any of otlp, prometheus, console; or none"
    ),
    "logs_exporter": ConfigParam(
        ("OTEL_LOGS_EXPORTER",), ("otlp",), _list, doc="any of otlp, console (each gets every record); or none"
    ),
    "sample_rate": ConfigParam(
        ("OTEL_TRACES_SAMPLER_ARG", "MESHWATCH_SAMPLE_RATE"), 1.0, _float, doc="share of new traces kept (0…1)"
    ),
    "sampler": ConfigParam(
        ("OTEL_TRACES_SAMPLER",),
        "parentbased_traceidratio",
        doc="parentbased_traceidratio, traceidratio, parentbased_always_on, always_on, always_off, …",
    ),
    "propagators": ConfigParam(
        ("OTEL_PROPAGATORS",), ("tracecontext", "baggage"), _list, doc="tracecontext, baggage, b3, b3multi, jaeger"
    ),
    "instrumentations": ConfigParam(
        ("MESHWATCH_INSTRUMENTATIONS",), ("all",), _list, doc="instrumentors to use when installed; all = every one"
    ),
    "disabled_instrumentations": ConfigParam(
        ("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",), (), _list, doc="instrumentors to skip, by name"
    ),
    "excluded_urls": ConfigParam(
        ("OTEL_PYTHON_EXCLUDED_URLS",), (), _list, doc="URL regexes the server instrumentors do not trace"
    ),
    "peer_service_mapping": ConfigParam(
        ("OTEL_INSTRUMENTATION_COMMON_PEER_SERVICE_MAPPING",),
        {},
        _mapping,
        doc="host[:port]=service,… names the service an HTTP client calls (peer.service, and the "
        "peer_service label of http.client.request.duration)",
    ),
    "fastapi_middleware": ConfigParam(
        ("MESHWATCH_FASTAPI_MIDDLEWARE",),
        True,
        _bool,
        doc="FastAPI server spans from meshwatch's own ASGI middleware (cheapest); false: see MESHWATCH_FASTAPI_NATIVE",
    ),
    "fastapi_native": ConfigParam(
        ("MESHWATCH_FASTAPI_NATIVE",),
        True,
        _bool,
        doc="use FastAPI's own OpenTelemetry support where FastAPI has it (cheaper), else the contrib instrumentor",
    ),
    "wsgi_middleware": ConfigParam(
        ("MESHWATCH_WSGI_MIDDLEWARE",),
        True,
        _bool,
        doc="Flask and Django server spans from meshwatch's own WSGI span (cheaper); false: the contrib instrumentors",
    ),
    "server_spans": ConfigParam(
        ("MESHWATCH_SERVER_SPANS",),
        True,
        _bool,
        doc="server spans made by uvicorn, hypercorn and gunicorn for apps no framework instrumentation traces "
        "(plain ASGI/WSGI apps)",
    ),
    "asgi_internal_spans": ConfigParam(
        ("MESHWATCH_ASGI_INTERNAL_SPANS",), False, _bool, doc="one span per ASGI send/receive message (costly)"
    ),
    "sdk_fast_path": ConfigParam(
        ("MESHWATCH_SDK_FAST_PATH",),
        True,
        _bool,
        doc="meshwatch's span class, OTLP encoder and log records where checked equal to the SDK's; false: the SDK's",
    ),
    "broker_polling_spans": ConfigParam(
        ("MESHWATCH_BROKER_POLLING_SPANS",),
        False,
        _bool,
        doc="trace the calls a message-broker client (kombu: Celery) makes for itself outside any task or request",
    ),
    "log_stdout": ConfigParam(("MESHWATCH_LOG_STDOUT",), True, _bool, doc="one JSON object per log record on stdout"),
    "log_level": ConfigParam(
        ("MESHWATCH_LOG_LEVEL",), None, doc="root logger level; default INFO unless the application set one"
    ),
    "log_capture": ConfigParam(
        ("MESHWATCH_LOG_CAPTURE",), True, _bool, doc="attach meshwatch's handler to the root logger"
    ),
    "runtime_metrics": ConfigParam(
        ("MESHWATCH_RUNTIME_METRICS",), True, _bool, doc="process CPU, memory, threads, GC metrics"
    ),
    "metric_export_interval": ConfigParam(
        ("OTEL_METRIC_EXPORT_INTERVAL",), 15.0, _float, doc="seconds between metric pushes (env: ms)", env_scale=1000
    ),
    "prometheus_host": ConfigParam(("OTEL_EXPORTER_PROMETHEUS_HOST",), "127.0.0.1", doc="pull endpoint address"),
    "prometheus_port": ConfigParam(
        ("OTEL_EXPORTER_PROMETHEUS_PORT",), 9464, _int, doc="pull endpoint port (with metrics_exporter prometheus)"
    ),
    "schedule_delay": ConfigParam(
        ("OTEL_BSP_SCHEDULE_DELAY",), 1.0, _float, doc="seconds between span/log batches (env: ms)", env_scale=1000
    ),
    "max_queue_size": ConfigParam(
        ("OTEL_BSP_MAX_QUEUE_SIZE",), 4096, _int, doc="spans (and log records) held; beyond it they are dropped"
    ),
    "max_export_batch_size": ConfigParam(("OTEL_BSP_MAX_EXPORT_BATCH_SIZE",), 512, _int, doc="items per export call"),
    "redact": ConfigParam(("MESHWATCH_REDACT",), True, _bool, doc="mask attribute and log-field values by key"),
    "redact_patterns": ConfigParam(
        ("MESHWATCH_REDACT_PATTERNS",),
        DEFAULT_REDACT_PATTERNS,
        _list,
        doc="regexes matched against keys (case-insensitive)",
    ),
    "drop_report_interval": ConfigParam(
        ("MESHWATCH_DROP_REPORT_INTERVAL",), 60.0, _float, doc="seconds between 'telemetry dropped' log lines"
    ),
    "shutdown_timeout": ConfigParam(
        ("MESHWATCH_SHUTDOWN_TIMEOUT",), 5.0, _float, doc="seconds shutdown() (and exit) waits to flush"
    ),
    "disabled": ConfigParam(("OTEL_SDK_DISABLED",), False, _bool, doc="true: init() does nothing"),
}


@dataclass(frozen=True)
class Settings:
    """The resolved settings; one attribute per entry of ``PARAMS``, in its order.

    No defaults here: ``resolve`` fills every field from ``PARAMS``, where each default is
    written once (a test holds the field names and order to ``PARAMS``).
    """

    service_name: str | None
    service_version: str | None
    service_namespace: str | None
    environment: str | None
    resource_attributes: Mapping[str, str]
    endpoint: str | None
    traces_endpoint: str | None
    metrics_endpoint: str | None
    logs_endpoint: str | None
    protocol: str
    traces_protocol: str | None
    metrics_protocol: str | None
    logs_protocol: str | None
    headers: Mapping[str, str] = field(repr=False)
    certificate: str | None
    client_certificate: str | None
    client_key: str | None
    insecure: bool | None
    compression: str
    export_timeout: float
    traces_exporter: tuple[str, ...]
    metrics_exporter: tuple[str, ...]
    logs_exporter: tuple[str, ...]
    sample_rate: float
    sampler: str
    propagators: tuple[str, ...]
    instrumentations: tuple[str, ...]
    disabled_instrumentations: tuple[str, ...]
    excluded_urls: tuple[str, ...]
    peer_service_mapping: Mapping[str, str]
    fastapi_middleware: bool
    fastapi_native: bool
    wsgi_middleware: bool
    server_spans: bool
    asgi_internal_spans: bool
    broker_polling_spans: bool
    sdk_fast_path: bool
    log_stdout: bool
    log_level: str | None
    log_capture: bool
    runtime_metrics: bool
    metric_export_interval: float
    prometheus_host: str
    prometheus_port: int
    schedule_delay: float
    max_queue_size: int
    max_export_batch_size: int
    redact: bool
    redact_patterns: tuple[str, ...]
    drop_report_interval: float
    shutdown_timeout: float
    disabled: bool

    # --- derived ------------------------------------------------------------------

    def protocol_for(self, signal: str) -> str:
        return getattr(self, f"{signal}_protocol") or self.protocol

    def endpoint_for(self, signal: str) -> str:
        """The URL one signal is exported to, as the OTLP exporter spec defines it."""
        specific = getattr(self, f"{signal}_endpoint")
        if specific:
            return specific
        protocol = self.protocol_for(signal)
        if protocol == "grpc":
            return self.endpoint or "http://localhost:4317"
        base = (self.endpoint or "http://localhost:4318").rstrip("/")
        return f"{base}/v1/{signal}"


def _coerce(name: str, param: ConfigParam, value: Any) -> Any:
    """Arguments are given as Python values; lists may be given as a comma string too."""
    if isinstance(value, str) and param.parse is not _str:
        return param.parse(value)
    if param.parse is _list and isinstance(value, list | tuple | set | frozenset):
        return tuple(str(v) for v in value)
    if param.parse is _float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def resolve(arguments: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``init()`` arguments, else the environment, else defaults.

    Raises ``ConfigError`` naming the setting and where its bad value came from,
    so a typo in an env var is a clear message at start-up, not a silent default.
    """
    arguments = {k: v for k, v in (arguments or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    unknown = set(arguments) - set(PARAMS)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}; known: {', '.join(PARAMS)}")
    values: dict[str, Any] = {}
    for name, param in PARAMS.items():
        if name in arguments:
            try:
                values[name] = _coerce(name, param, arguments[name])
            except ValueError as exc:
                raise ConfigError(f"meshwatch setting {name}={arguments[name]!r}: {exc}") from None
            continue
        for env_var in param.env_vars:
            raw = environ.get(env_var)
            if raw is None or (raw.strip() == "" and param.parse is not _list):
                continue
            try:
                value = param.parse(raw)
            except ValueError as exc:
                shown = "<hidden>" if param.secret else repr(raw)
                raise ConfigError(f"environment variable {env_var}={shown}: {exc}") from None
            if param.env_scale != 1.0:
                value = value / param.env_scale
            values[name] = value
            break
        else:
            values[name] = param.default
    settings = Settings(**values)
    _validate(settings)
    return settings


_PROTOCOLS = {"grpc", "http/protobuf"}
_SAMPLERS = {
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
}


def _validate(settings: Settings) -> None:
    for signal in ("traces", "metrics", "logs"):
        protocol = settings.protocol_for(signal)
        if protocol not in _PROTOCOLS:
            raise ConfigError(f"OTLP protocol {protocol!r} for {signal} is not supported; use grpc or http/protobuf")
    if settings.sampler not in _SAMPLERS:
        raise ConfigError(f"sampler {settings.sampler!r} is unknown; use one of {', '.join(sorted(_SAMPLERS))}")
    if not 0.0 <= settings.sample_rate <= 1.0:
        raise ConfigError(f"sample_rate must be between 0 and 1, got {settings.sample_rate}")
    if settings.max_queue_size < 1 or settings.max_export_batch_size < 1:
        raise ConfigError("max_queue_size and max_export_batch_size must be at least 1")
    if settings.compression not in {"none", "gzip"}:
        raise ConfigError(f"compression {settings.compression!r} is not supported; use none or gzip")


def settings_table() -> str:
    """The Markdown table of every setting, for docs/instrumentation.md ("Settings")."""
    names = {f.name for f in fields(Settings)}
    lines = ["| argument | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for name, param in PARAMS.items():
        default = param.default
        if isinstance(default, tuple):
            default = ",".join(default) if default else ""
        elif isinstance(default, dict):
            default = ""
        if isinstance(default, bool):
            default = "true" if default else "false"
        elif isinstance(default, float) and default.is_integer():
            default = int(default)
        if default is None or default == "":
            shown = "—"
        elif param.parse is _float and name != "sample_rate":
            shown = f"`{default}` s"
        else:
            shown = f"`{default}`"
        if name == "redact_patterns":
            shown = "secrets (see below)"
        env = ", ".join(f"`{e}`" for e in param.env_vars)
        lines.append(f"| `{name}` | {env} | {shown} | {param.doc} |")
        assert name in names
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(settings_table())
