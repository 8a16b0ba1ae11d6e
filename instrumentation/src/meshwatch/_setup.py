"""``init()`` and ``shutdown()``: wire the SDK's three providers, logging and auto-instrumentation.

The providers become the OpenTelemetry globals once per process (the API allows
no second time). A second ``init()`` therefore keeps them and swaps what can be
swapped: resource, sampler, span and log exporters, the logging handler (never
duplicated). Metric readers are fixed by the first ``init()`` of a process.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import get_logger_provider, set_logger_provider
from opentelemetry.metrics import get_meter_provider, set_meter_provider
from opentelemetry.propagate import set_global_textmap
from opentelemetry.sdk._logs import LogRecordProcessor, ReadableLogRecord, ReadWriteLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from ._batch import BoundedBatcher
from ._celery import integrate_celery, record_task_metrics
from ._config import Settings, resolve
from ._dropped import TALLY
from ._exporters import exporter_factory
from ._instrumentors import InstrumentationReport, at_import, instrument_all, instrument_app
from ._logs import MeshwatchHandler, MeshwatchLoggerProvider, configure_structlog, install_handler, remove_handlers
from ._metrics import HTTP_DURATION_BUCKETS, FanOutMetricExporter, build_meter_provider, metric_factories
from ._red import RedMetrics
from ._redact import Redactor
from ._resource import build_resource
from ._sdk_fence import sdk_parts
from ._server_logs import hook_server_logging
from ._signals import flush_on_stop_signals
from ._traces import MeshwatchSpanProcessor, SwitchableSampler, build_propagator, build_sampler, redact_spans

__all__ = ["Status", "force_flush", "init", "instrument", "shutdown", "state"]

_logger = logging.getLogger("meshwatch")


@dataclass
class Status:
    """What ``init()`` set up; returned to the caller and shown by ``meshwatch-run --check``."""

    settings: Settings
    resource: Resource
    instrumented: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    prometheus_port: int | None = None


class _ForwardingLogProcessor(LogRecordProcessor):
    """Records emitted through the OpenTelemetry logs API (not stdlib logging) join the same queue."""

    def __init__(self, state: _State) -> None:
        self._state = state

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        batcher = self._state.log_batcher
        sinks = self._state.handler.sinks if self._state.handler else []
        if batcher is None and not sinks:
            return
        record = log_record.log_record
        if record.attributes:
            record.attributes = dict(self._state.redactor.mapping(record.attributes))
        readable = ReadableLogRecord(
            log_record=record,
            resource=log_record.resource or self._state.resource,
            instrumentation_scope=log_record.instrumentation_scope,
            limits=log_record.limits,
        )
        if batcher is not None:
            batcher.add(readable)
        for sink in sinks:
            sink(readable)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass
class _State:
    settings: Settings
    resource: Resource
    redactor: Redactor
    sampler: SwitchableSampler
    span_processor: MeshwatchSpanProcessor
    tracer_provider: Any = None
    meter_provider: Any = None
    logger_provider: Any = None
    metric_fan_out: FanOutMetricExporter | None = None
    periodic_reader: Any = None
    prometheus: Any = None
    span_batcher: BoundedBatcher[Any] | None = None
    log_batcher: BoundedBatcher[Any] | None = None
    handler: MeshwatchHandler | None = None
    report: InstrumentationReport = field(default_factory=InstrumentationReport)
    pid: int = field(default_factory=os.getpid)
    active: bool = True


_STATE: _State | None = None
_LOCK = threading.RLock()
#: Seconds shutdown() still gives a collector that failed the last export.
_UNREACHABLE_FLUSH = 1.0
_HOOKS_REGISTERED = False


def state() -> _State | None:
    """The current pipeline (None before ``init()``); for meshwatch's own helpers and tests."""
    return _STATE


def _opt_in_stable_http_semconv() -> None:
    """Instrumentors emit ``http.server.request.duration`` (seconds, ``http.route``) only when opted in."""
    current = [p.strip() for p in os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",") if p.strip()]
    if "http" in current or "http/dup" in current:
        return
    os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = ",".join([*current, "http"])
    try:
        from opentelemetry.instrumentation._semconv import _OpenTelemetrySemanticConventionStability as Stability

        if Stability._initialized:  # something initialised it before us: read the variable again
            Stability._initialized = False
            Stability._initialize()
    except Exception:  # noqa: S110 - older instrumentation packages: the variable alone suffices
        pass


def _span_batcher(settings: Settings, redactor: Redactor) -> BoundedBatcher[Any] | None:
    kinds = [k for k in settings.traces_exporter if k != "none"]
    if not kinds:
        return None
    return BoundedBatcher(
        "traces",
        exporter_factory(settings, "traces", kinds),
        max_queue_size=settings.max_queue_size,
        max_export_batch_size=settings.max_export_batch_size,
        schedule_delay=settings.schedule_delay,
        prepare=redact_spans(redactor),
    )


def _log_batcher(settings: Settings) -> BoundedBatcher[Any] | None:
    kinds = [k for k in settings.logs_exporter if k != "none"]
    if not kinds:
        return None
    return BoundedBatcher(
        "logs",
        exporter_factory(settings, "logs", kinds),
        max_queue_size=settings.max_queue_size,
        max_export_batch_size=settings.max_export_batch_size,
        schedule_delay=settings.schedule_delay,
    )


def _install_providers(st: _State, *, capture_metrics: bool) -> None:
    settings = st.settings
    # meshwatch's faster span class where it is checked to record what the SDK's does, else the SDK's
    provider_class = sdk_parts(fast_path=settings.sdk_fast_path).tracer_provider
    st.tracer_provider = provider_class(
        sampler=st.sampler,
        resource=st.resource,
        shutdown_on_exit=False,
        active_span_processor=st.span_processor,  # type: ignore[arg-type]
    )
    existing = trace.get_tracer_provider()
    if isinstance(existing, TracerProvider):
        # Someone else set up the SDK first (e.g. opentelemetry-instrument): feed ours from theirs.
        _logger.warning("a TracerProvider was already set; meshwatch adds its span processor to it")
        existing.add_span_processor(st.span_processor)
        st.tracer_provider = existing
    else:
        trace.set_tracer_provider(st.tracer_provider)

    prometheus = None
    if "prometheus" in settings.metrics_exporter:
        from ._prometheus import PrometheusEndpoint

        prometheus = PrometheusEndpoint(settings.prometheus_host, settings.prometheus_port)
    provider, fan_out, periodic = build_meter_provider(
        settings, st.resource, red=st.span_processor.red, capture=capture_metrics, prometheus=prometheus
    )
    st.meter_provider, st.metric_fan_out, st.periodic_reader = provider, fan_out, periodic
    set_meter_provider(provider)
    if get_meter_provider() is not provider:
        _logger.warning("a MeterProvider was already set; meshwatch's metrics reach only meshwatch's own readers")
    if prometheus is not None:
        st.prometheus = prometheus
        prometheus.start()

    st.logger_provider = MeshwatchLoggerProvider(resource=st.resource, shutdown_on_exit=False)
    st.logger_provider.add_log_record_processor(_ForwardingLogProcessor(st))
    set_logger_provider(st.logger_provider)
    if get_logger_provider() is not st.logger_provider:
        _logger.warning("a LoggerProvider was already set; OpenTelemetry-API log records bypass meshwatch")


def _configure_logging(st: _State) -> None:
    settings = st.settings
    old = remove_handlers()
    sinks = old[0].sinks if old else []
    if not settings.log_capture:
        return
    sdk_handler = None
    if not sdk_parts(fast_path=settings.sdk_fast_path).fast_logs:
        from opentelemetry.sdk._logs import LoggingHandler  # the SDK's own record construction

        sdk_handler = LoggingHandler(logger_provider=st.logger_provider)
    handler = MeshwatchHandler(
        service=str(st.resource.attributes.get("service.name")),
        stdout=settings.log_stdout,
        enqueue=st.log_batcher.add if st.log_batcher else None,
        resource=st.resource,
        redactor=st.redactor,
        sdk_handler=sdk_handler,
    )
    handler.sinks = sinks
    st.handler = handler
    install_handler(handler, settings.log_level)
    configure_structlog()
    if importlib.util.find_spec("celery") is not None:

        def celery_imported() -> None:
            integrate_celery(lambda: st.handler, _at_exit)
            if st.meter_provider is not None:
                record_task_metrics(st.meter_provider.get_meter("meshwatch.celery"))

        at_import("celery", celery_imported)  # not imported by init() itself (~0.2 s)
    hook_server_logging(lambda: st.handler)


def init(*, app: Any = None, _capture_metrics: bool = False, **options: Any) -> Status:
    """Set up traces, metrics and logs for this process; see ``meshwatch.init``."""
    global _STATE  # noqa: PLW0603 - one pipeline per process
    with _LOCK:
        settings = resolve(options)
        if settings.disabled:
            return Status(settings=settings, resource=Resource.get_empty())
        redactor = Redactor(settings.redact_patterns, enabled=settings.redact)
        resource = build_resource(settings)
        TALLY.report_interval = settings.drop_report_interval
        _opt_in_stable_http_semconv()
        set_global_textmap(build_propagator(settings.propagators))
        sampler = build_sampler(settings.sampler, settings.sample_rate)

        st = _STATE
        if st is None:
            st = _State(
                settings=settings,
                resource=resource,
                redactor=redactor,
                sampler=SwitchableSampler(sampler, broker_polling_spans=settings.broker_polling_spans),
                span_processor=MeshwatchSpanProcessor(RedMetrics(HTTP_DURATION_BUCKETS)),
            )
            st.span_batcher = _span_batcher(settings, redactor)
            st.span_processor.set_batcher(st.span_batcher)
            st.log_batcher = _log_batcher(settings)
            _install_providers(st, capture_metrics=_capture_metrics)
            _STATE = st
        else:
            _reconfigure(st, settings, resource, redactor, sampler)
        if st.span_processor.red is not None:
            st.span_processor.red.peer_services = dict(settings.peer_service_mapping)
        _configure_logging(st)
        _register_hooks()
        st.report = instrument_all(settings)
        if app is not None:
            st.report.instrumented.append(instrument_app(app, settings))
        status = _status(st)
        _log_started(status)
        return status


def _reconfigure(st: _State, settings: Settings, resource: Resource, redactor: Redactor, sampler: Any) -> None:
    """A second ``init()`` (or one after ``shutdown()``) in the same process: swap, never duplicate."""
    st.settings = settings
    st.redactor = redactor
    st.sampler.inner = sampler
    st.sampler.broker_polling_spans = settings.broker_polling_spans
    _replace_resource(st, resource)
    old_spans = st.span_processor.set_batcher(_span_batcher(settings, redactor))
    st.span_batcher = st.span_processor.batcher
    old_logs, st.log_batcher = st.log_batcher, _log_batcher(settings)
    for old in (old_spans, old_logs):
        if old is not None:
            threading.Thread(target=old.shutdown, args=(settings.shutdown_timeout,), daemon=True).start()
    if st.metric_fan_out is not None:
        st.metric_fan_out.set_factories(metric_factories(settings))
    elif [k for k in settings.metrics_exporter if k not in {"none", "prometheus"}]:
        _logger.warning(
            "metrics exporters are fixed by the first init() of a process; restart to add %s",
            ",".join(settings.metrics_exporter),
        )
    if st.prometheus is not None:
        st.prometheus.stop()
        if "prometheus" in settings.metrics_exporter:
            st.prometheus.start()
    st.active = True


def _replace_resource(st: _State, resource: Resource) -> None:
    st.resource = resource
    provider = st.tracer_provider
    if isinstance(provider, TracerProvider):
        with provider._tracers_lock:
            provider._resource = resource
            for tracer in provider._tracers.values():
                tracer._set_resource(resource)
    if st.meter_provider is not None:
        st.meter_provider._sdk_config.resource = resource
    if st.logger_provider is not None:
        st.logger_provider._resource = resource
    if st.handler is not None:
        st.handler.resource = resource


def _status(st: _State) -> Status:
    return Status(
        settings=st.settings,
        resource=st.resource,
        instrumented=list(st.report.instrumented),
        skipped=dict(st.report.skipped),
        failed=dict(st.report.failed),
        prometheus_port=st.prometheus.bound_port if st.prometheus else None,
    )


def _log_started(status: Status) -> None:
    settings = status.settings
    destinations = {
        signal: (
            ",".join(kinds) + (f" → {settings.endpoint_for(signal)}" if "otlp" in kinds else "")
            if (kinds := [k for k in getattr(settings, f"{signal}_exporter") if k != "none"])
            else "none"
        )
        for signal in ("traces", "metrics", "logs")
    }
    unsupported = {n: r for n, r in status.skipped.items() if "not installed" not in r and "disabled" not in r}
    _logger.info(
        "meshwatch initialised: service %s; traces %s; metrics %s; logs %s; instrumented %s%s",
        status.resource.attributes.get("service.name"),
        destinations["traces"],
        destinations["metrics"],
        destinations["logs"],
        ", ".join(status.instrumented) or "nothing",
        "".join(f"; not instrumented {n}: {r}" for n, r in {**unsupported, **status.failed}.items()),
        extra={"meshwatch_instrumented": status.instrumented, "meshwatch_failed": status.failed},
    )


# --- fork and exit -----------------------------------------------------------------


def _register_hooks() -> None:
    global _HOOKS_REGISTERED  # noqa: PLW0603 - once per process
    if _HOOKS_REGISTERED:
        return
    _HOOKS_REGISTERED = True
    atexit.register(_at_exit)
    flush_on_stop_signals(_at_exit)  # a default SIGTERM would skip atexit
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child)


#: Wait at most this long, before a fork, for a metrics collection running in another thread.
_FORK_COLLECT_WAIT = 2.0
_fork_held: list[Any] = []


def _metric_locks(st: _State) -> tuple[Any, Any]:
    """The SDK's measurement-consumer lock (held for a whole collection) and the periodic reader's
    export lock (held for a whole export); either may be None on another SDK version."""
    consumer = getattr(st.meter_provider, "_measurement_consumer", None)
    return getattr(consumer, "_lock", None), getattr(st.periodic_reader, "_export_lock", None)


def _before_fork() -> None:
    """Keep a fork from landing in the middle of a metrics collection.

    Only the forking thread survives in the child: a lock another thread held at that moment
    stays held there for ever. The SDK does not renew its collection and export locks after a
    fork, so a gunicorn worker forked while the master was collecting or exporting (every
    export interval) never exported a metric again. The collection is waited for (it is
    short and local); the export, which may wait on an unreachable collector, is not: the
    child gets a fresh export lock instead (and builds its own exporters).
    """
    st = _STATE
    if st is None or st.meter_provider is None:
        return
    collect_lock, _ = _metric_locks(st)
    if collect_lock is not None and collect_lock.acquire(timeout=_FORK_COLLECT_WAIT):
        _fork_held.append(collect_lock)


def _after_fork_parent() -> None:
    while _fork_held:
        _fork_held.pop().release()


def _renew_metric_locks(st: _State) -> None:
    _fork_held.clear()
    collect_lock, export_lock = _metric_locks(st)
    if collect_lock is not None:
        st.meter_provider._measurement_consumer._lock = threading.Lock()
    if export_lock is not None:
        st.periodic_reader._export_lock = threading.Lock()
    if st.metric_fan_out is not None:
        st.metric_fan_out.renew_lock()


def _after_fork_child() -> None:
    """A gunicorn/multiprocessing worker: new identity, own exporters (batchers reset themselves)."""
    st = _STATE
    if st is None:
        _fork_held.clear()
        return
    if st.meter_provider is not None:
        _renew_metric_locks(st)
    TALLY.reset_after_fork()
    st.pid = os.getpid()
    fresh = Resource({"process.pid": os.getpid(), "service.instance.id": str(uuid.uuid4())})
    new = st.resource.merge(fresh)
    if isinstance(st.tracer_provider, TracerProvider):
        st.tracer_provider._update_resource(fresh)
    if st.meter_provider is not None:
        st.meter_provider._update_resource(fresh)
    if st.logger_provider is not None:
        st.logger_provider._update_resource(fresh)
    st.resource = new
    if st.handler is not None:
        st.handler.resource = new
    if st.prometheus is not None:
        st.prometheus.restart_after_fork()


def _at_exit() -> None:
    if _STATE is not None and _STATE.active and _STATE.pid == os.getpid():
        shutdown()


def force_flush(timeout: float = 5.0) -> bool:
    """Export everything pending now (spans, logs, a metrics collection), within ``timeout`` seconds."""
    st = _STATE
    if st is None:
        return True
    deadline = time.monotonic() + timeout
    ok = True
    for batcher in (st.span_batcher, st.log_batcher):
        if batcher is not None:
            ok = batcher.force_flush(max(0.0, deadline - time.monotonic())) and ok
    if st.periodic_reader is not None:
        remaining_ms = max(0.0, deadline - time.monotonic()) * 1000
        ok = _bounded(lambda: st.periodic_reader.force_flush(timeout_millis=remaining_ms), remaining_ms / 1000) and ok
    return ok


def shutdown(timeout: float | None = None) -> None:
    """Flush and stop exporting within ``timeout`` seconds (default: the ``shutdown_timeout`` setting).

    The providers stay installed (OpenTelemetry allows setting them once per
    process), exporting nowhere, so a later ``init()`` resumes all three signals.
    """
    with _LOCK:
        st = _STATE
        if st is None or not st.active:
            return
        st.active = False
        timeout = st.settings.shutdown_timeout if timeout is None else timeout
        exporters = [st.span_batcher, st.log_batcher, st.metric_fan_out]
        if any(e is not None and e.last_ok is False for e in exporters):
            # The collector refused or was unreachable at the last attempt: waiting the whole
            # timeout for it would only delay the exit; give it one short chance.
            timeout = min(timeout, _UNREACHABLE_FLUSH)
        deadline = time.monotonic() + timeout

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        batchers = [b for b in (st.span_batcher, st.log_batcher) if b is not None]
        st.span_processor.set_batcher(None)
        st.span_batcher = None
        st.log_batcher = None
        if st.handler is not None:
            st.handler.enqueue = None
        batcher_workers = [(b, threading.Thread(target=b.shutdown, args=(timeout,), daemon=True)) for b in batchers]
        workers = [w for _, w in batcher_workers]
        if st.periodic_reader is not None and st.pid == os.getpid():
            workers.append(
                threading.Thread(
                    target=_quiet,
                    args=(st.periodic_reader.force_flush,),
                    kwargs={"timeout_millis": timeout * 1000},
                    daemon=True,
                )
            )
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(remaining())
        for batcher, worker in batcher_workers:
            if worker.is_alive():  # still exporting at the deadline: what it holds will not arrive
                batcher.abandon()
        if st.metric_fan_out is not None:
            st.metric_fan_out.set_factories([])
        if st.prometheus is not None:
            st.prometheus.stop()
        TALLY.maybe_report(force=True)


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(Exception):  # shutting down
        fn(*args, **kwargs)


def _bounded(fn: Any, timeout: float) -> bool:
    """``fn()`` on a helper thread, waited for at most ``timeout``; False on timeout or error."""
    result: list[bool] = []

    def run() -> None:
        try:
            result.append(bool(fn()))
        except Exception:  # e.g. the SDK's MetricsTimeoutError when the deadline is already near
            result.append(False)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def instrument(app: Any) -> str:
    """Instrument an application object created before ``init()`` (FastAPI, Starlette, Flask)."""
    st = _STATE
    settings = st.settings if st else resolve()
    return instrument_app(app, settings)
