"""Log records: one JSON object per line on stdout, and the same record shipped over OTLP.

One handler does both jobs, so the active span, the exception text and the extra
fields are read once per record. The OTLP record is built directly as the SDK's
``ReadableLogRecord`` and queued on meshwatch's bounded batcher: the SDK path
(``Logger.emit`` → ``ReadWriteLogRecord`` → ``BoundedAttributes`` → copy) costs
several times more per record and adds nothing a log line needs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry._logs import LogRecord as APILogRecord
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import TraceFlags

from ._celery import console_stream
from ._redact import Redactor

__all__ = ["MeshwatchHandler", "MeshwatchLoggerProvider", "install_handler", "remove_handlers", "tag_exception"]

try:  # orjson is several times faster than json for the one dumps() per record
    import orjson

    def _dumps(obj: dict[str, Any]) -> str:
        return orjson.dumps(obj, default=str).decode()

except ImportError:  # pragma: no cover - exercised only without the [fast] extra
    import json

    def _dumps(obj: dict[str, Any]) -> str:
        return json.dumps(obj, default=str, ensure_ascii=False, separators=(",", ":"))


#: Attributes every LogRecord has; anything else on a record is an "extra" field.
_RESERVED = frozenset(
    {
        *vars(logging.LogRecord("", 0, "", 0, "", None, None)),
        "message",
        "asctime",
        "taskName",
        # added by the OpenTelemetry logging instrumentor's record factory
        "otelSpanID",
        "otelTraceID",
        "otelTraceSampled",
        "otelServiceName",
        # uvicorn's copy of the message with terminal colour codes, for its own console formatter
        "color_message",
    }
)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}
#: Keys of the JSON line itself; an extra field with one of these names is prefixed.
_LINE_KEYS = frozenset(
    {"timestamp", "level", "logger", "message", "service", "trace_id", "span_id", "exception", "stack"}
)
_OTEL_SEVERITY_TEXT = {"WARNING": "WARN", "CRITICAL": "FATAL"}


def _severity(levelno: int) -> SeverityNumber:
    if levelno < logging.DEBUG:
        return SeverityNumber.TRACE
    if levelno >= logging.CRITICAL:
        return SeverityNumber.FATAL
    # Four OTel steps per stdlib step of ten: DEBUG=5, INFO=9, WARN=13, ERROR=17.
    return SeverityNumber(min(24, 5 + (levelno - 10) * 4 // 10))


class _Timestamps:
    """RFC 3339 UTC timestamps; the second-resolution prefix is formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1_000_000):06d}Z"


class _OTLPRecord(APILogRecord):
    """An API LogRecord filled in directly: its ``__init__`` looks up the current context again."""

    def __init__(  # noqa: PLR0917 - one slot per OTLP field, positional on the hot path
        self,
        timestamp: int,
        observed_timestamp: int,
        trace_id: int,
        span_id: int,
        trace_flags: TraceFlags,
        severity_text: str,
        severity_number: SeverityNumber,
        body: Any,
        attributes: dict[str, Any],
    ) -> None:
        self.timestamp = timestamp
        self.observed_timestamp = observed_timestamp
        self.context = None
        self.trace_id = trace_id
        self.span_id = span_id
        self.trace_flags = trace_flags
        self.severity_text = severity_text
        self.severity_number = severity_number
        self.body = body
        self.attributes = attributes
        self.event_name = None
        self.exception = None


#: Where a server span leaves its span context on the exception that escaped its request.
_SPAN_CONTEXT_ATTRIBUTE = "_meshwatch_span_context"


def tag_exception(exc: BaseException, span_context: trace.SpanContext) -> None:
    """Remember on ``exc`` the span of the request it escaped from (the innermost one wins).

    Why: the server logs such an exception ("Exception in ASGI application", gunicorn's
    "Error handling request") after the request's span has ended and its context is
    detached, so the record had no trace id. The handler reads it back from ``exc_info``.
    """
    if getattr(exc, _SPAN_CONTEXT_ATTRIBUTE, None) is None:
        # an exception class with __slots__ refuses it: no trace id then, as before
        with contextlib.suppress(AttributeError, TypeError):
            setattr(exc, _SPAN_CONTEXT_ATTRIBUTE, span_context)


def _record_span_context(record: logging.LogRecord) -> trace.SpanContext:
    """The current span's context; outside any span, that of the request the logged exception escaped."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid and record.exc_info:
        tagged = getattr(record.exc_info[1], _SPAN_CONTEXT_ATTRIBUTE, None)
        if tagged is not None:
            return tagged
    return span_context


def _otlp_value(value: Any) -> Any:
    """An attribute value the OTLP encoder accepts (it rejects arbitrary objects, failing the batch)."""
    if value is None or isinstance(value, str | bool | int | float | bytes):
        return value
    if isinstance(value, Mapping):
        return {str(k): _otlp_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_otlp_value(v) for v in value]
    return str(value)


class MeshwatchHandler(logging.Handler):
    """Writes each record as a JSON line on stdout and/or queues it for OTLP export.

    ``sinks`` receive every finished OTLP record too (the pytest fixture's capture).
    With ``sdk_handler`` (the SDK's ``LoggingHandler``, when ``_sdk_fence`` finds the
    SDK's log record changed) the OTLP record is the SDK's, made by that handler and
    routed by the logger provider's processor to the same queue and sinks.
    """

    def __init__(
        self,
        *,
        service: str,
        stdout: bool,
        enqueue: Callable[[ReadableLogRecord], None] | None,
        resource: Resource,
        redactor: Redactor,
        level: int = logging.NOTSET,
        sdk_handler: logging.Handler | None = None,
    ) -> None:
        super().__init__(level)
        self.sdk_handler = sdk_handler
        self.service = service
        self.stdout = stdout
        self.enqueue = enqueue
        self.resource = resource
        self.redactor = redactor
        self.sinks: list[Callable[[ReadableLogRecord], None]] = []
        self._timestamps = _Timestamps()
        self._scopes: dict[str, InstrumentationScope] = {}
        self._rate_limited: dict[tuple[str, Any], float] = {}
        self._local = threading.local()

    # The base Handler takes a lock around emit(); stdout writes are atomic per line
    # and the rest is thread-safe, so skip it (one lock less per record).
    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if not self.filter(record):
            return False
        if getattr(self._local, "busy", False):
            return False  # a log call made while emitting (e.g. by an exporter): drop it, no recursion
        self._local.busy = True
        try:
            self.emit(record)
        finally:
            self._local.busy = False
        return True

    def filter(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if record.name.startswith("opentelemetry"):
            if record.name.startswith("opentelemetry.exporter") and record.levelno > logging.WARNING:
                # A failed export is not an application error: the items are counted as dropped
                # (meshwatch.sdk.dropped) and summarised in meshwatch's own warning.
                record.levelno, record.levelname = logging.WARNING, "WARNING"
            # The SDK and exporters log per failed batch; one line per minute per message is plenty,
            # and meshwatch's own drop report says what was lost.
            key = (record.name, record.msg)
            now = time.monotonic()
            if now - self._rate_limited.get(key, -1e9) < 60.0:
                return False
            self._rate_limited[key] = now
        return super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit(record)
        except Exception:
            self.handleError(record)

    def _emit(self, record: logging.LogRecord) -> None:
        span_context = _record_span_context(record)
        valid = span_context.is_valid
        message = record.getMessage()
        extras = {k: v for k, v in record.__dict__.items() if k not in _RESERVED and k[0] != "_"}
        if extras:
            extras = dict(self.redactor.mapping(extras))
        exception = None
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc_value, exc_tb = record.exc_info
            exception = {
                "type": exc_type.__name__,
                "message": str(exc_value),
                "stacktrace": "".join(traceback.format_exception(exc_type, exc_value, exc_tb)),
            }
        if self.stdout:
            line: dict[str, Any] = {
                "timestamp": self._timestamps.format(record.created),
                "level": record.levelname,
                "logger": record.name,
                "message": message,
                "service": self.service,
                "trace_id": format(span_context.trace_id, "032x") if valid else None,
                "span_id": format(span_context.span_id, "016x") if valid else None,
            }
            if exception:
                line["exception"] = exception
            if record.stack_info:
                line["stack"] = record.stack_info
            for key, value in extras.items():
                line[f"extra.{key}" if key in _LINE_KEYS else key] = value
            stream = console_stream() if "celery" in sys.modules else sys.stdout
            stream.write(_dumps(line) + "\n")
            stream.flush()
        if (self.enqueue is None and not self.sinks) or record.name.startswith("opentelemetry"):
            return  # the SDK's own complaints about exporting are not shipped through the exporter
        if self.sdk_handler is not None:
            # The stock path (Logger.emit -> meshwatch's log processor), given the extras this
            # handler ships: without the logging instrumentor's otel* copies and private fields.
            # (not makeLogRecord: it goes through the record factory, which adds them again)
            shipped = object.__new__(logging.LogRecord)
            shipped.__dict__.update({k: v for k, v in record.__dict__.items() if k in _STANDARD or k in extras})
            if valid and not trace.get_current_span().get_span_context().is_valid:
                # the SDK handler reads the current context: make the escaped-from request's current
                token = context_api.attach(trace.set_span_in_context(trace.NonRecordingSpan(span_context)))
                try:
                    self.sdk_handler.emit(shipped)
                finally:
                    context_api.detach(token)
                return
            self.sdk_handler.emit(shipped)
            return
        attributes = {k: _otlp_value(v) for k, v in extras.items()}
        if exception:
            attributes["exception.type"] = exception["type"]
            attributes["exception.message"] = exception["message"]
            attributes["exception.stacktrace"] = exception["stacktrace"]
        scope = self._scopes.get(record.name)
        if scope is None:
            scope = self._scopes.setdefault(record.name, InstrumentationScope(record.name))
        otlp = ReadableLogRecord(
            log_record=_OTLPRecord(
                int(record.created * 1e9),
                time.time_ns(),
                span_context.trace_id if valid else 0,
                span_context.span_id if valid else 0,
                span_context.trace_flags if valid else TraceFlags(0),
                _OTEL_SEVERITY_TEXT.get(record.levelname, record.levelname),
                _severity(record.levelno),
                message,
                attributes,
            ),
            resource=self.resource,
            instrumentation_scope=scope,
        )
        if self.enqueue is not None:
            self.enqueue(otlp)
        for sink in self.sinks:
            sink(otlp)


def remove_handlers(logger: logging.Logger | None = None) -> list[MeshwatchHandler]:
    """Detach every meshwatch handler (so a second ``init()`` never duplicates lines)."""
    logger = logger or logging.getLogger()
    removed = [h for h in logger.handlers if isinstance(h, MeshwatchHandler)]
    for handler in removed:
        logger.removeHandler(handler)
    return removed


def install_handler(handler: MeshwatchHandler, level: str | None) -> None:
    """Attach ``handler`` to the root logger, replacing an earlier meshwatch handler."""
    root = logging.getLogger()
    remove_handlers(root)
    root.addHandler(handler)
    if level:
        root.setLevel(level.upper())
    elif root.level == logging.WARNING:  # untouched default: INFO is what services expect
        root.setLevel(logging.INFO)
    logging.getLogger("meshwatch").setLevel(logging.INFO)


def configure_structlog() -> bool:
    """Route structlog through stdlib logging (and so through meshwatch's handler), if structlog is
    installed and the application has not configured it. Returns True when configured."""
    try:
        import structlog
    except ImportError:
        return False
    if structlog.is_configured():
        return False
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            _structlog_to_stdlib,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return True


_STDLIB_KWARGS = ("exc_info", "stack_info", "stacklevel")


def _structlog_to_stdlib(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Like structlog's ``render_to_log_kwargs``, but renames keys ``logging`` refuses in ``extra``."""
    kwargs: dict[str, Any] = {"msg": event_dict.pop("event", "")}
    for name in _STDLIB_KWARGS:
        if name in event_dict:
            kwargs[name] = event_dict.pop(name)
    kwargs["extra"] = {(f"{k}_" if k in _RESERVED else k): v for k, v in event_dict.items()}
    return kwargs


class MeshwatchLoggerProvider(LoggerProvider):
    """The SDK ``LoggerProvider``; asking again for a logger it made is one dict lookup.

    FastAPI's telemetry asks for its logger on every request; the SDK answers
    through two locks and a ``WeakSet.add`` (a new weak reference each time).
    A cached logger is already registered with the provider (the first call did
    it), so returning it straight from the cache changes nothing else.
    """

    def get_logger(
        self,
        name: str,
        version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> Any:
        if attributes is None:
            logger = self._logger_cache.get((name, version, schema_url))  # a dict read is atomic under the GIL
            if logger is not None:
                return logger
        return super().get_logger(name, version, schema_url, attributes)
