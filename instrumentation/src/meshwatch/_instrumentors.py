"""Auto-instrumentation: the OpenTelemetry contrib instrumentor of each installed library.

Each entry names the library module whose presence is probed (``find_spec``: no
import), the contrib instrumentor, and the keyword arguments meshwatch passes.
A library that is not installed, an instrumentor that is not installed (the
``meshwatch[...]`` extra not chosen), or one that fails, is reported and skipped:
``init()`` never fails because of one of them. Any entry can be skipped by name
(``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=redis,grpc``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from opentelemetry.instrumentation.dependencies import DependencyConflictError

from ._config import Settings
from ._span_owners import claim

__all__ = [
    "INSTRUMENTORS",
    "Discovered",
    "Instrumentor",
    "InstrumentationReport",
    "discover",
    "instrument_all",
    "instrument_app",
]

_logger = logging.getLogger("meshwatch")


@dataclass(frozen=True)
class Instrumentor:
    name: str
    library: str  # module probed with find_spec
    module: str  # contrib instrumentor module
    cls: str
    extra: str  # the meshwatch extra that installs it
    kwargs: Callable[[Settings], dict[str, Any]] = field(default=lambda settings: {})
    #: Names that also skip this one (``grpc`` skips all four gRPC instrumentors).
    aliases: tuple[str, ...] = ()


def _no_meter() -> dict[str, Any]:
    """HTTP RED metrics come from the spans (meshwatch._red): the instrumentor's own are skipped."""
    from opentelemetry.metrics import NoOpMeterProvider

    return {"meter_provider": NoOpMeterProvider()}


def _client_kwargs(settings: Settings) -> dict[str, Any]:
    return _no_meter()


def _asgi_kwargs(settings: Settings) -> dict[str, Any]:
    # Two extra spans per request (send start + body) and one per receive: the
    # largest single cost of ASGI tracing, and noise in Jaeger. Off unless asked.
    kwargs: dict[str, Any] = _no_meter()
    if not settings.asgi_internal_spans:
        kwargs["exclude_spans"] = ["receive", "send"]
    if settings.excluded_urls:
        kwargs["excluded_urls"] = ",".join(settings.excluded_urls)
    return kwargs


def _server_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs = _no_meter()
    if settings.excluded_urls:
        kwargs["excluded_urls"] = ",".join(settings.excluded_urls)
    return kwargs


def _logging_kwargs(settings: Settings) -> dict[str, Any]:
    # meshwatch's own handler ships and prints records; the instrumentor only adds
    # otelTraceID/otelSpanID to records for applications with their own formatters.
    return {"enable_log_auto_instrumentation": False, "inject_trace_context": True, "set_logging_format": False}


_C = "opentelemetry.instrumentation"
#: Order matters only for frameworks: FastAPI before Starlette (FastAPI subclasses Starlette).
INSTRUMENTORS: tuple[Instrumentor, ...] = (
    Instrumentor("fastapi", "fastapi", f"{_C}.fastapi", "FastAPIInstrumentor", "fastapi", _asgi_kwargs),
    Instrumentor("starlette", "starlette", f"{_C}.starlette", "StarletteInstrumentor", "starlette", _asgi_kwargs),
    Instrumentor("flask", "flask", f"{_C}.flask", "FlaskInstrumentor", "flask", _server_kwargs),
    Instrumentor("django", "django", f"{_C}.django", "DjangoInstrumentor", "django", _server_kwargs),
    Instrumentor("requests", "requests", f"{_C}.requests", "RequestsInstrumentor", "requests", _client_kwargs),
    Instrumentor("httpx", "httpx", f"{_C}.httpx", "HTTPXClientInstrumentor", "httpx", _client_kwargs),
    Instrumentor(
        "aiohttp-client", "aiohttp", f"{_C}.aiohttp_client", "AioHttpClientInstrumentor", "aiohttp", _client_kwargs
    ),
    Instrumentor("urllib3", "urllib3", f"{_C}.urllib3", "URLLib3Instrumentor", "urllib3", _client_kwargs),
    Instrumentor("urllib", "urllib.request", f"{_C}.urllib", "URLLibInstrumentor", "urllib", _client_kwargs),
    Instrumentor("sqlalchemy", "sqlalchemy", f"{_C}.sqlalchemy", "SQLAlchemyInstrumentor", "sqlalchemy"),
    Instrumentor("psycopg", "psycopg", f"{_C}.psycopg", "PsycopgInstrumentor", "psycopg"),
    Instrumentor("psycopg2", "psycopg2", f"{_C}.psycopg2", "Psycopg2Instrumentor", "psycopg2"),
    Instrumentor("redis", "redis", f"{_C}.redis", "RedisInstrumentor", "redis"),
    Instrumentor("asyncpg", "asyncpg", f"{_C}.asyncpg", "AsyncPGInstrumentor", "asyncpg"),
    Instrumentor("grpc_client", "grpc", f"{_C}.grpc", "GrpcInstrumentorClient", "grpc", aliases=("grpc",)),
    Instrumentor("grpc_server", "grpc", f"{_C}.grpc", "GrpcInstrumentorServer", "grpc", aliases=("grpc",)),
    Instrumentor("grpc_aio_client", "grpc", f"{_C}.grpc", "GrpcAioInstrumentorClient", "grpc", aliases=("grpc",)),
    Instrumentor("grpc_aio_server", "grpc", f"{_C}.grpc", "GrpcAioInstrumentorServer", "grpc", aliases=("grpc",)),
    Instrumentor("logging", "logging", f"{_C}.logging", "LoggingInstrumentor", "logging", _logging_kwargs),
)


#: What applying one instrumentor came to, and why when it was not applied.
Outcome = tuple[Literal["instrumented", "skipped", "failed"], str]


@dataclass
class InstrumentationReport:
    """What ``init()`` did with each instrumentor, by name (also returned to the caller)."""

    instrumented: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def record(self, name: str, outcome: Outcome) -> None:
        """File one instrumentor's outcome under its name (a failure is also logged)."""
        status, reason = outcome
        if status == "instrumented":
            self.instrumented.append(name)
        elif status == "skipped":
            self.skipped[name] = reason
        else:
            self.failed[name] = reason
            _logger.warning("meshwatch could not instrument %s: %s", name, reason)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _selected(names: set[str], wanted: Sequence[str], disabled: Sequence[str]) -> bool:
    if "*" in disabled or "all" in disabled or names & set(disabled):
        return False
    return "all" in wanted or bool(names & set(wanted))


#: What meshwatch changes in FastAPI's own telemetry defaults: RED metrics come from the
#: spans (meshwatch._red), and per-operation spans (dependencies, endpoint, serialisation)
#: triple the span count of a request. An application's explicit ``telemetry=`` wins.
_FASTAPI_DEFAULTS = {"metrics": False, "operation_spans": False}


def _fastapi_has_native_telemetry() -> bool:
    """FastAPI ships ``fastapi.telemetry``, looked for without importing FastAPI (that takes ~0.3 s)."""
    if "fastapi" in sys.modules:
        return _installed("fastapi.telemetry")
    spec = importlib.util.find_spec("fastapi")
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    return any(
        Path(loc, "telemetry.py").exists() or Path(loc, "telemetry", "__init__.py").exists() for loc in locations
    )


def at_import(library: str, apply: Callable[[], None]) -> None:
    """``apply()`` now if ``library`` is imported, else right after its first import.

    Why: instrumenting a library imports it, so ``init()`` imported every installed one
    (FastAPI, SQLAlchemy, requests, Flask, Celery, Redis, ... ~1 s on a full environment)
    whether the service used it or not. wrapt's post-import hook (the mechanism the
    instrumentors' own wrapt patches are built on) runs ``apply`` once the module's body
    has run, before the importing code gets the module, so nothing escapes it.
    """
    import wrapt

    wrapt.register_post_import_hook(lambda _module: apply(), library)


def _use_fastapi_native(settings: Settings) -> str:
    """Make FastAPI apps created from now on use FastAPI's built-in OpenTelemetry support.

    FastAPI (0.16x and later) creates one server span per request with the semantic-
    convention attributes, names it by route, and records exceptions as log records,
    through the global providers meshwatch installs. Measured against the contrib
    middleware it does the same job for about a quarter less CPU per request, mainly
    because it does not resolve the route a second time to name the span.
    """
    import fastapi.applications

    cls = fastapi.applications.FastAPI
    if getattr(cls.__init__, "_meshwatch", False):
        return "fastapi (native)"
    original = cls.__init__

    def __init__(self: Any, *args: Any, telemetry: Any = None, **kwargs: Any) -> None:
        original(self, *args, telemetry={**_fastapi_defaults(), **(telemetry or {})}, **kwargs)

    __init__._meshwatch = True  # type: ignore[attr-defined]
    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]
    claim(cls, "fastapi (native)")  # FastAPI's own span: the servers add none (_span_owners)
    return "fastapi (native)"


#: FastAPI's own telemetry off when meshwatch's middleware makes the server span (an app's
#: explicit ``telemetry=`` still wins, e.g. to get FastAPI's operation spans as well).
_FASTAPI_OFF = {"tracing": False, "metrics": False, "logs": False}


def _use_meshwatch_middleware(settings: Settings) -> str:
    """Trace every FastAPI application with meshwatch's ASGI server span (``_asgi.py``).

    ``FastAPI.__call__`` is wrapped at the class level, as ``__init__`` is for the
    native path: the span is the outermost layer of every FastAPI app (user middleware
    and Starlette's error handling inside it, so a 500 and its exception are seen),
    whenever the app was created, and a FastAPI app mounted in another is not traced twice.
    """
    import re

    import fastapi.applications

    from ._asgi import ServerSpans

    cls = fastapi.applications.FastAPI
    spans = ServerSpans([re.compile(p) for p in settings.excluded_urls])
    if getattr(cls.__call__, "_meshwatch", False):
        cls.__call__._meshwatch_spans[0] = spans  # type: ignore[attr-defined] # re-init: new exclusions
        return "fastapi (meshwatch)"
    original_init = getattr(cls.__init__, "__wrapped__", cls.__init__)
    original_call = cls.__call__
    holder = [spans]

    def __init__(self: Any, *args: Any, telemetry: Any = None, **kwargs: Any) -> None:
        original_init(self, *args, telemetry={**_FASTAPI_OFF, **(telemetry or {})}, **kwargs)

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        await holder[0](original_call, self, scope, receive, send)

    __init__._meshwatch = True  # type: ignore[attr-defined]
    __init__.__wrapped__ = original_init  # type: ignore[attr-defined]
    __call__._meshwatch = True  # type: ignore[attr-defined]
    __call__._meshwatch_spans = holder  # type: ignore[attr-defined]
    __call__.__wrapped__ = original_call  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]
    cls.__call__ = __call__  # type: ignore[method-assign]
    claim(cls, "fastapi (meshwatch)")  # the servers add no span of their own (_span_owners)
    return "fastapi (meshwatch)"


_EXCLUDED: list[Any] = []


def _fastapi_defaults() -> dict[str, Any]:
    defaults: dict[str, Any] = dict(_FASTAPI_DEFAULTS)
    if _EXCLUDED:
        patterns = _EXCLUDED[0]

        def exclude(scope: Any) -> bool:
            # As the contrib instrumentors match OTEL_PYTHON_EXCLUDED_URLS: against the URL.
            server = scope.get("server") or ("", None)
            host = f"{server[0]}:{server[1]}" if server[1] else server[0]
            url = f"{scope.get('scheme', 'http')}://{host}{scope.get('path', '')}"
            return any(p.search(url) for p in patterns)

        defaults["exclude"] = exclude
    return defaults


def _django_ready() -> bool:
    """Django's settings are configured now, so its instrumentor can be applied at once."""
    try:
        from ._django import settings_configured

        return settings_configured()
    except Exception:  # an unusual Django: defer, which never configures it
        return False


def _apply(entry: Instrumentor, settings: Settings) -> Outcome:
    """Apply one of meshwatch's own table entries; never raises.

    Django: the contrib instrumentor configures its middleware and puts it in
    ``settings.MIDDLEWARE``; then, where meshwatch's WSGI span applies (``_wsgi.blocker``),
    meshwatch's middleware takes that place and hands the contrib one its ASGI requests.
    """
    outcome = _instrument(lambda: getattr(importlib.import_module(entry.module), entry.cls), entry.kwargs(settings))
    if entry.name == "django" and outcome[0] == "instrumented":
        _use_wsgi_for_django(settings)
    return outcome


def _use_wsgi_for_django(settings: Settings) -> None:
    try:
        from ._wsgi import blocker, use_for_django

        reason = blocker("django", settings)
        if reason is not None:
            _logger.debug("meshwatch left django's server spans to the contrib middleware: %s", reason)
        elif not use_for_django():
            _logger.debug("meshwatch left django's server spans alone: the contrib middleware is not in MIDDLEWARE")
    except Exception as exc:  # the contrib middleware stays, and does the work
        _logger.warning("meshwatch kept the contrib django middleware: %s: %s", type(exc).__name__, exc)


def _flask_own(entry: Instrumentor, settings: Settings) -> None:
    """meshwatch's WSGI span for Flask, at Flask's first import; the contrib instrumentor if that fails."""
    try:
        import flask

        from ._wsgi import use_for_flask

        use_for_flask()
        claim(flask.Flask, "flask (meshwatch)")  # the servers add no span of their own (_span_owners)
    except Exception as exc:
        _logger.warning("meshwatch used the contrib flask instrumentor: %s: %s", type(exc).__name__, exc)
        _log_deferred(entry, _apply(entry, settings))


def _instrument(load: Callable[[], Any], kwargs: dict[str, Any]) -> Outcome:
    """Load an instrumentor class and instrument with it: ("instrumented" | "skipped" | "failed", why)."""
    try:
        instrumentor = load()()
        if instrumentor.is_instrumented_by_opentelemetry:
            return "instrumented", ""
        instrumentor.instrument(raise_exception_on_conflict=True, **kwargs)
        if instrumentor.is_instrumented_by_opentelemetry:
            return "instrumented", ""
        return "skipped", "instrumentor declined"
    except DependencyConflictError as exc:
        # e.g. a library version newer than the instrumentor supports: skipped, said once in the start line
        return "skipped", _conflict_reason(exc.conflict)
    except Exception as exc:
        return "failed", f"{type(exc).__name__}: {exc}"


def _conflict_reason(conflict: Any) -> str:
    if getattr(conflict, "found", None):
        return f"installed {conflict.found} is outside {conflict.required}"
    return str(conflict)


@dataclass(frozen=True)
class Discovered:
    """An ``opentelemetry_instrumentor`` entry point meshwatch's table does not cover."""

    name: str
    value: str  # "module:Class"
    distribution: str  # the instrumentor's package, e.g. "opentelemetry-instrumentation-celery 0.66b1"
    entry_point: Any


def discover(table: Sequence[Instrumentor] = INSTRUMENTORS) -> list[Discovered]:
    """Every installed instrumentor entry point, as ``opentelemetry-instrument`` finds them, minus the table's.

    An entry point is covered by the table when it names one of the table's entries or
    comes from the same module (``httpx2`` from the httpx instrumentor's package is not
    a second HTTPX instrumentation to add). Reading entry points imports nothing.
    """
    from importlib.metadata import entry_points

    names = {n for e in table for n in (e.name, *e.aliases)}
    modules = {e.module for e in table}
    found: dict[str, Discovered] = {}
    for ep in entry_points(group="opentelemetry_instrumentor"):
        if ep.name in names or ep.name in found or ep.value.split(":", 1)[0] in modules:
            continue
        dist = getattr(ep, "dist", None)
        label = f"{dist.name} {dist.version}" if dist is not None else ep.value
        found[ep.name] = Discovered(ep.name, ep.value, label, ep)
    return sorted(found.values(), key=lambda d: d.name)


def _discovered_conflict(found: Discovered) -> str | None:
    """Why the instrumented library is absent or of an unsupported version, read from package metadata."""
    from opentelemetry.instrumentation.dependencies import get_dist_dependency_conflicts

    dist = getattr(found.entry_point, "dist", None)
    if dist is None:
        return None
    conflict = get_dist_dependency_conflicts(dist)
    return _conflict_reason(conflict) if conflict is not None else None


def _instrument_discovered(report: InstrumentationReport, wanted: Sequence[str], disabled: Sequence[str]) -> None:
    for found in discover():
        if not _selected({found.name}, wanted, disabled):
            report.skipped[found.name] = "disabled by configuration"
            continue
        try:
            conflict = _discovered_conflict(found)
        except Exception as exc:  # metadata an instrumentor package got wrong: try it anyway
            conflict = None
            _logger.debug("meshwatch could not read the requirements of %s: %s", found.distribution, exc)
        if conflict is not None:
            report.skipped[found.name] = conflict
            continue
        library = _instrumented_module(found)
        if library is not None and library not in sys.modules:
            # loading the instrumentor imports its library (the Celery one imports Celery): at import
            at_import(library, lambda found=found: _log_discovered(found, _instrument(found.entry_point.load, {})))
            report.instrumented.append(found.name)
            continue
        report.record(found.name, _instrument(found.entry_point.load, {}))


def _instrumented_module(found: Discovered) -> str | None:
    """The one top-level module an entry point's instrumentor is for, read from package metadata, or None.

    Its distribution's ``instruments`` extra names the library's distribution (``celery<6.0,>=4.0``),
    whose ``top_level.txt`` names the module. None (so: applied at once) when that is not one module.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    dist = getattr(found.entry_point, "dist", None)
    requirements = [r for r in (dist.requires or []) if "extra == 'instruments'" in r] if dist else []
    if len(requirements) != 1:
        return None
    try:
        top_level = (distribution(Requirement(requirements[0]).name).read_text("top_level.txt") or "").split()
    except (PackageNotFoundError, ValueError):
        return None
    return top_level[0] if len(top_level) == 1 else None


def _log_discovered(found: Discovered, outcome: Outcome) -> None:
    status, reason = outcome
    if status != "instrumented":
        _logger.warning("meshwatch did not instrument %s: %s", found.name, reason)


def _fastapi_own(settings: Settings, report: InstrumentationReport) -> str:
    """meshwatch's middleware or FastAPI's native telemetry, now or at FastAPI's first import; its name."""
    name = "fastapi (meshwatch)" if settings.fastapi_middleware else "fastapi (native)"

    def apply() -> None:
        try:
            if settings.fastapi_middleware:
                _use_meshwatch_middleware(settings)
            else:
                import re

                _EXCLUDED[:] = [[re.compile(p) for p in settings.excluded_urls]] if settings.excluded_urls else []
                _use_fastapi_native(settings)
        except Exception as exc:
            report.failed["fastapi"] = f"{type(exc).__name__}: {exc}"
            _logger.warning("meshwatch could not instrument fastapi: %s", report.failed["fastapi"])

    at_import("fastapi", apply)
    return name


def _django_when_imported(entry: Instrumentor, settings: Settings) -> None:
    """At once if Django's settings are configured, else at the start of the first ``django.setup()``."""
    if _django_ready():
        _log_deferred(entry, _apply(entry, settings))
        return
    from ._django import apply_at_setup

    apply_at_setup(lambda: _log_deferred(entry, _apply(entry, settings)))


def _log_deferred(entry: Instrumentor, outcome: Outcome) -> None:
    """A deferred instrumentor's outcome, said when it is known (the start line said "at django.setup()")."""
    status, reason = outcome
    if status != "instrumented":
        _logger.warning("meshwatch did not instrument %s: %s", entry.name, reason)


def _wsgi_blocker(framework: str, settings: Settings) -> str | None:
    try:
        from ._wsgi import blocker

        return blocker(framework, settings)
    except Exception as exc:  # e.g. opentelemetry-instrumentation-wsgi missing: the contrib path
        return f"{type(exc).__name__}: {exc}"


def instrument_all(settings: Settings, report: InstrumentationReport | None = None) -> InstrumentationReport:
    """Instrument every selected, installed library; never raises."""
    report = report or InstrumentationReport()
    wanted = [n.strip().lower() for n in settings.instrumentations]
    disabled = [n.strip().lower() for n in settings.disabled_instrumentations]
    for entry in INSTRUMENTORS:
        if not _selected({entry.name, *entry.aliases}, wanted, disabled):
            report.skipped[entry.name] = "disabled by configuration"
            continue
        if not _installed(entry.library):
            report.skipped[entry.name] = f"{entry.library} is not installed"
            continue
        own_fastapi = entry.name == "fastapi" and (settings.fastapi_middleware or settings.fastapi_native)
        if own_fastapi and _fastapi_has_native_telemetry():
            name = _fastapi_own(settings, report)
            if entry.name not in report.failed:
                report.instrumented.append(name)
            continue
        if not _installed(entry.module):
            from ._install_hint import install_command

            report.skipped[entry.name] = f"instrumentor not installed ({install_command(entry.extra)})"
            continue
        if entry.name == "flask" and _wsgi_blocker("flask", settings) is None:
            at_import("flask", lambda entry=entry: _flask_own(entry, settings))
            report.instrumented.append("flask (meshwatch)")
            continue
        if entry.name == "django" and ("django" not in sys.modules or not _django_ready()):
            at_import("django", lambda entry=entry: _django_when_imported(entry, settings))
            report.instrumented.append("django (at django.setup())")
            continue
        if entry.library in sys.modules:
            report.record(entry.name, _apply(entry, settings))
        else:  # applied when the service imports it; a failure then is a warning line
            at_import(entry.library, lambda entry=entry: _log_deferred(entry, _apply(entry, settings)))
            report.instrumented.append(entry.name)
    _instrument_discovered(report, wanted, disabled)
    _hook_servers(settings, report)
    return report


def _hook_servers(settings: Settings, report: InstrumentationReport) -> None:
    """Server-level spans for the apps no framework instrumentation traces (``_server_hooks``)."""
    try:
        from ._server_hooks import hook_servers

        hooked = hook_servers(settings.server_spans, settings.excluded_urls, at_import)
    except Exception as exc:  # the frameworks' own spans are unaffected
        report.failed["server spans"] = f"{type(exc).__name__}: {exc}"
        _logger.warning("meshwatch: no server-level spans: %s", report.failed["server spans"])
        return
    report.instrumented.extend(f"{server} (server spans)" for server in hooked)


def instrument_app(app: Any, settings: Settings) -> str:
    """Instrument one already-created application object (FastAPI, Starlette, Flask)."""
    module = type(app).__module__.split(".")[0]
    if module == "fastapi":
        if getattr(type(app).__call__, "_meshwatch", False):
            return "fastapi (meshwatch)"  # every FastAPI app is already traced, whenever it was created
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, **_asgi_kwargs(settings))
        return "fastapi"
    if module == "starlette":
        from opentelemetry.instrumentation.starlette import StarletteInstrumentor

        StarletteInstrumentor.instrument_app(app, **_asgi_kwargs(settings))
        return "starlette"
    if module == "flask":
        if getattr(type(app).wsgi_app, "_meshwatch", False):
            return "flask (meshwatch)"  # every Flask app is already traced, whenever it was created
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor.instrument_app(app, **_server_kwargs(settings))
        return "flask"
    raise TypeError(f"meshwatch.instrument_app does not know {type(app).__qualname__} from {module!r}")
