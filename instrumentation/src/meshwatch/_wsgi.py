"""meshwatch's own WSGI server span for Flask and Django: one SERVER span per request, nothing else.

Why: under gunicorn, ``meshwatch-run`` on Flask answered 0.43x the bare service's
requests/s and on Django 0.73x, against 0.57x on FastAPI where meshwatch has its own
ASGI middleware (``_asgi.py``). Per request the contrib Flask and Django instrumentors
collect the request attributes twice, add to an active-requests counter and record a
duration histogram (no-ops here: RED metrics come from the span, ``_red.py``), attach
three contexts (the extracted parent, the span through ``use_span``, Flask's
sqlcommenter tags), keep weak references to Flask's request context, and Django's
resolves the URL a second time to name the span and builds the absolute URI four times
to test the (empty) exclusion list. This module does the one job: the span, with the
attributes the contrib instrumentors give it under the stable HTTP semantic conventions
(``init()`` opts in to them, ``_setup._opt_in_stable_http_semconv``), attached once.

What the span carries, as ``opentelemetry-instrumentation-wsgi``'s
``collect_request_attributes`` builds them in that mode: ``http.request.method`` (``_OTHER``
for unknown methods, with ``http.request.method_original``), ``url.scheme``,
``server.address`` (the whole Host header, as contrib's), ``server.port`` (``SERVER_PORT``),
``url.path`` and ``url.query`` (when the server gives ``RAW_URI`` or ``REQUEST_URI``),
``client.address``, ``client.port``, ``user_agent.original`` (and
``user_agent.synthetic.type``), ``network.protocol.version``; then ``http.route`` (Flask's
URL rule, Django's ``request.resolver_match.route``) and ``http.response.status_code``; a
5xx is status ERROR with ``error.type`` the code. The span is named as the contrib
instrumentor names it (``"GET /items/<int:id>"``; Flask without a rule: ``"GET /path"``;
Django without a match: ``"GET"``). An unhandled exception is recorded as an event and is
the status description (``"ValueError: boom"``), as ``use_span`` does. When a span is
already current (a WSGI app inside another traced one) the span is INTERNAL and continues
it, as ``_start_internal_or_server_span`` does.
``tests/instrumentation/test_wsgi_middleware.py`` runs the same requests through this and
through the contrib instrumentor and compares name, kind, attributes, status and events.

When it does not apply, the contrib instrumentor does the work (``blocker`` says why):
other HTTP semantic conventions (``OTEL_SEMCONV_STABILITY_OPT_IN`` without ``http``, or ``http/dup``), excluded URLs,
captured headers, Django's traced request attributes, every-method capture, a response
propagator, or ``MESHWATCH_WSGI_MIDDLEWARE=false``. Django requests served over ASGI
go to the contrib middleware, which the meshwatch one wraps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.instrumentation.wsgi import wsgi_getter as _ENVIRON_GETTER
from opentelemetry.trace import INVALID_SPAN, SpanKind, Status, StatusCode

from ._extract import Extractor
from ._logs import tag_exception

__all__ = ["DjangoServerSpans", "WsgiServerSpans", "blocker", "use_for_django", "use_for_flask"]

#: The methods ``opentelemetry.util.http.sanitize_method`` keeps (others are ``_OTHER``).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"})
_SERVER = SpanKind.SERVER
_INTERNAL = SpanKind.INTERNAL
_ERROR = StatusCode.ERROR
_UNSET = StatusCode.UNSET
_attach = context_api.attach
_detach = context_api.detach
_get_current_span = trace.get_current_span
_set_span_in_context = trace.set_span_in_context
_SPAN_KEY = "meshwatch.wsgi.span"
_EXCEPTION_KEY = "meshwatch.wsgi.exception"
_RULE_KEY = "meshwatch.wsgi.rule"
#: Distinct User-Agent values remembered with their attributes (random values only refill it).
_AGENTS_MAX = 256
DJANGO_MIDDLEWARE = "meshwatch._wsgi.DjangoServerSpans"
CONTRIB_DJANGO_MIDDLEWARE = "opentelemetry.instrumentation.django.middleware.otel_middleware._DjangoMiddleware"


def blocker(framework: str, settings: Any) -> str | None:
    """Why meshwatch's WSGI span cannot stand in for the contrib instrumentor here; None if it can."""
    if not getattr(settings, "wsgi_middleware", True):
        return "MESHWATCH_WSGI_MIDDLEWARE=false"
    env = os.environ
    opt_in = {p.strip() for p in (env.get("OTEL_SEMCONV_STABILITY_OPT_IN") or "").split(",")}
    if "http/dup" in opt_in or "http" not in opt_in:  # init() opts in to "http" unless the user chose otherwise
        return "the HTTP semantic conventions are not the stable ones alone (OTEL_SEMCONV_STABILITY_OPT_IN)"
    if settings.excluded_urls or env.get(f"OTEL_PYTHON_{framework.upper()}_EXCLUDED_URLS"):
        return "excluded URLs are configured"
    for name in (
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE",
        "OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS",
        f"OTEL_PYTHON_{framework.upper()}_TRACED_REQUEST_ATTRS",
    ):
        if env.get(name):
            return f"{name} is set"
    try:
        from opentelemetry.instrumentation.propagators import get_global_response_propagator

        if get_global_response_propagator() is not None:
            return "a response propagator is set"
    except ImportError:
        pass
    return None


def _user_agent_attributes(agent: str) -> tuple[tuple[str, str], ...]:
    """``user_agent.original`` and, for a test or bot client, ``user_agent.synthetic.type`` (as contrib's)."""
    try:
        from opentelemetry.util.http import detect_synthetic_user_agent
    except ImportError:  # an older contrib release: no synthetic type
        return (("user_agent.original", agent),)
    synthetic = detect_synthetic_user_agent(agent)
    if synthetic:
        return (("user_agent.original", agent), ("user_agent.synthetic.type", synthetic))
    return (("user_agent.original", agent),)


def _int(value: Any) -> int | None:
    """``set_int_attribute``'s rule: a non-empty value that ``int()`` accepts."""
    if not value:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _exception_description(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class WsgiServerSpans:
    """Starts and ends the server span of one WSGI request; the framework hooks supply route and errors."""

    def __init__(self, scope: str, tracer_provider: Any = None) -> None:
        self._scope = scope
        self.tracer_provider = tracer_provider  # None: the global one, as it is when the request comes
        self._provider: Any = None
        self._tracer: Any = None
        self._agents: dict[str, tuple[tuple[str, str], ...]] = {}
        self._extractor = Extractor(("HTTP_TRACEPARENT", "HTTP_TRACESTATE", "HTTP_BAGGAGE"), _ENVIRON_GETTER)

    def _get_tracer(self) -> Any:
        provider = self.tracer_provider or trace.get_tracer_provider()
        if provider is not self._provider:  # a new provider after fork or re-init
            from . import __version__

            self._tracer = provider.get_tracer(self._scope, __version__)
            self._provider = provider
        return self._tracer

    def attributes(self, environ: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: PLR0915 - one pass per request
        """The span's start attributes from the WSGI environ, and its method for the name."""
        get = environ.get
        original = get("REQUEST_METHOD", "").strip()
        upper = original.upper()
        method = upper if upper in _METHODS else "_OTHER"
        attributes: dict[str, Any] = {"http.request.method": method}
        if original and original != method:
            attributes["http.request.method_original"] = original
        value = get("wsgi.url_scheme")
        if value:
            attributes["url.scheme"] = value
        value = get("HTTP_HOST")
        if value:
            attributes["server.address"] = value  # the whole Host header, port included, as contrib's
        value = _int(get("SERVER_PORT"))
        if value is not None:
            attributes["server.port"] = value
        target = get("RAW_URI")
        if target is None:
            target = get("REQUEST_URI")
        if target:  # without either, contrib's new conventions carry no URL attribute
            value = get("PATH_INFO")
            if value:
                attributes["url.path"] = value
            value = get("QUERY_STRING")
            if value:
                attributes["url.query"] = value
        remote = get("REMOTE_ADDR")
        if remote:
            attributes["client.address"] = remote
        value = _int(get("REMOTE_PORT"))
        if value is not None:
            attributes["client.port"] = value
        value = get("REMOTE_HOST")
        if value and value != remote:
            attributes["client.address"] = value
        agent = get("HTTP_USER_AGENT")
        if agent:
            if not isinstance(agent, str):
                agent = bytes(agent).decode("latin-1")
            pairs = self._agents.get(agent)
            if pairs is None:
                pairs = _user_agent_attributes(agent)
                if len(self._agents) >= _AGENTS_MAX:
                    self._agents.clear()
                self._agents[agent] = pairs
            for key, item in pairs:
                attributes[key] = item
        flavor = get("SERVER_PROTOCOL", "")
        if flavor.upper().startswith("HTTP/"):
            flavor = flavor[5:]
        if flavor:
            attributes["network.protocol.version"] = flavor
        return ("HTTP" if method == "_OTHER" else method), attributes

    def start(self, environ: dict[str, Any], attributes: dict[str, Any], name: str) -> tuple[Any, object]:
        """Start the span (SERVER with the propagated parent, or INTERNAL under a current span) and attach it."""
        current = _get_current_span()
        if current is INVALID_SPAN:
            parent = self._extractor.extract(environ)
            span = self._get_tracer().start_span(name, context=parent, kind=_SERVER, attributes=attributes)
            return span, _attach(_set_span_in_context(span, parent))
        span = self._get_tracer().start_span(name, kind=_INTERNAL, attributes=attributes)
        return span, _attach(_set_span_in_context(span))

    @staticmethod
    def finish(
        span: Any,
        attributes: dict[str, Any],
        *,
        name: str | None,
        route: str | None,
        status_line: str | None,
        error: BaseException | None,
    ) -> None:
        """Route, status code, status and the exception, then end the span."""
        # An unsampled (record-only) span kept only the sampler's attributes, none of ours:
        # set them again so the RED metrics still count the request by method, route and status.
        end: dict[str, Any] = {} if span.get_span_context().trace_flags & 1 else dict(attributes)
        if route:
            end["http.route"] = route
        if name is not None:
            span.update_name(name)
        status: Status | None = None
        if status_line is not None:
            code_text = status_line.split(" ", 1)[0]
            try:
                code = int(code_text)
            except ValueError:
                status = Status(_ERROR, "Non-integer HTTP status: " + code_text)
                end["error.type"] = code_text
            else:
                end["http.response.status_code"] = code
                if code >= 500 or code < 100:  # http_status_to_status_code(server_span=True)
                    status = Status(_ERROR)
                    end["error.type"] = code_text
        span.set_attributes(end)
        if error is not None:
            span.record_exception(error)
            status = Status(_ERROR, _exception_description(error))
        if status is not None:
            span.set_status(status)
        span.end()


# --- Flask ---------------------------------------------------------------------------------------


def _flask_exception(sender: Any, exception: BaseException, **_extra: Any) -> None:
    """Flask's ``got_request_exception``: the exception the contrib instrumentor's teardown would see."""
    import flask

    if flask.has_request_context():
        environ = flask.request.environ
        if _SPAN_KEY in environ:
            environ[_EXCEPTION_KEY] = exception
            environ.setdefault(_RULE_KEY, flask.request.url_rule)


def _flask_rule(environ: dict[str, Any]) -> Any:
    """The request's URL rule while its request context is pushed (Flask clears ``werkzeug.request`` on pop)."""
    request = environ.get("werkzeug.request")
    return getattr(request, "url_rule", None) if request is not None else None


def _flask_names(environ: dict[str, Any], method: str) -> tuple[str, str | None]:
    """Span name and route as contrib's ``get_default_span_name``: the URL rule, else the path."""
    rule = environ.pop(_RULE_KEY, None)
    if rule is not None:
        return f"{method} {rule.rule}", rule.rule
    path = environ.get("PATH_INFO", "").strip()
    return (f"{method} {path}" if method != "HTTP" and path else method), None


def use_for_flask(tracer_provider: Any = None) -> str:
    """Trace every Flask application with this span: ``Flask.wsgi_app`` wrapped at the class level.

    Applied when Flask is first imported, so every app (and every subclass not overriding
    ``wsgi_app``) is traced; middleware the app wraps around ``app.wsgi_app`` (ProxyFix)
    runs outside the span, as with the contrib instrumentor.
    """
    import flask
    from flask.signals import got_request_exception

    cls = flask.Flask
    if getattr(cls.wsgi_app, "_meshwatch", False):
        return "flask (meshwatch)"
    original = cls.wsgi_app
    spans = WsgiServerSpans("meshwatch.wsgi", tracer_provider)
    attributes_of, start, finish = spans.attributes, spans.start, spans.finish

    def wsgi_app(self: Any, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if _SPAN_KEY in environ:  # a Flask app dispatched to by one already traced
            return original(self, environ, start_response)
        method, attributes = attributes_of(environ)
        span, token = start(environ, attributes, method)
        environ[_SPAN_KEY] = span
        status: list[str] = []

        def traced_start_response(status_line: str, headers: Any, *args: Any) -> Any:
            status.append(status_line)
            environ[_RULE_KEY] = _flask_rule(environ)
            return start_response(status_line, headers, *args)

        try:
            result = original(self, environ, traced_start_response)
        except BaseException as exc:
            tag_exception(exc, span.get_span_context())  # gunicorn's "Error handling request" then has the trace id
            name, route = _flask_names(environ, method)
            finish(span, attributes, name=name, route=route, status_line=status[-1] if status else None, error=exc)
            raise
        else:
            name, route = _flask_names(environ, method)
            error = environ.pop(_EXCEPTION_KEY, None)
            finish(span, attributes, name=name, route=route, status_line=status[-1] if status else None, error=error)
            return result
        finally:
            _detach(token)

    got_request_exception.connect(_flask_exception, weak=False)
    wsgi_app._meshwatch = True  # type: ignore[attr-defined]
    wsgi_app.__wrapped__ = original  # type: ignore[attr-defined]
    wsgi_app.__doc__ = original.__doc__
    cls.wsgi_app = wsgi_app  # type: ignore[method-assign]
    return "flask (meshwatch)"


# --- Django --------------------------------------------------------------------------------------

_DJANGO_SPANS = WsgiServerSpans("meshwatch.wsgi")


def _django_names(request: Any, method: str) -> tuple[str, str | None]:
    """Span name and ``http.route`` as the contrib middleware makes them.

    The route is ``request.resolver_match.route`` (set by Django's URL resolution); the
    name is that route, else the match's ``url_name``, else the method. Where the handler's
    match may differ from the one contrib computes (``resolve(request.path)``: a script
    prefix, a per-request urlconf, or no resolution because a middleware answered first),
    the contrib way is used.
    """
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None) if match is not None else None
    if match is None or request.path != request.path_info or hasattr(request, "urlconf"):
        from django.conf import settings
        from django.urls import Resolver404, resolve

        try:
            match = resolve(request.path, urlconf=settings.ROOT_URLCONF)
        except Resolver404:
            match = None
        except Exception:  # an unusual urlconf: the name is the method
            match = None
    if method == "HTTP" or match is None:
        return method, route or None
    if getattr(match, "route", None):
        return f"{method} {match.route}", route or None
    if getattr(match, "url_name", None):
        return f"{method} {match.url_name}", route or None
    return method, route or None


class DjangoServerSpans:
    """Django middleware making the server span of each WSGI request (first in ``MIDDLEWARE``).

    Takes the contrib ``_DjangoMiddleware``'s place in ``settings.MIDDLEWARE`` (``use_for_django``)
    and hands it the requests it does not make spans for: those served over ASGI.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from django.core.handlers.wsgi import WSGIRequest

        self.get_response = get_response
        self._wsgi_request = WSGIRequest
        self._contrib: Any = None

    def _fallback(self, request: Any) -> Any:
        if self._contrib is None:
            from opentelemetry.instrumentation.django.middleware.otel_middleware import _DjangoMiddleware

            self._contrib = _DjangoMiddleware(self.get_response)
        return self._contrib(request)

    def __call__(self, request: Any) -> Any:
        if type(request) is not self._wsgi_request and not isinstance(request, self._wsgi_request):
            return self._fallback(request)
        environ = request.META
        if _SPAN_KEY in environ:
            return self.get_response(request)
        spans = _DJANGO_SPANS
        method, attributes = spans.attributes(environ)
        span, token = spans.start(environ, attributes, method)
        environ[_SPAN_KEY] = span
        try:
            response = self.get_response(request)
        except BaseException as exc:
            tag_exception(exc, span.get_span_context())
            name, route = _django_names(request, method)
            spans.finish(span, attributes, name=name, route=route, status_line=None, error=exc)
            raise
        else:
            name, route = _django_names(request, method)
            status_line = f"{response.status_code} {response.reason_phrase}"
            error = environ.pop(_EXCEPTION_KEY, None)
            spans.finish(span, attributes, name=name, route=route, status_line=status_line, error=error)
            return response
        finally:
            _detach(token)

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        """The contrib middleware sets ``http.route`` here on the requests handed to it (ASGI)."""
        if self._contrib is not None and _SPAN_KEY not in request.META:
            self._contrib.process_view(request, view_func, view_args, view_kwargs)

    def process_exception(self, request: Any, exception: BaseException) -> None:
        """A view's exception (Django turns it into a 500 afterwards): recorded on the span."""
        if _SPAN_KEY in request.META:
            request.META[_EXCEPTION_KEY] = exception
        elif self._contrib is not None:
            self._contrib.process_exception(request, exception)


def use_for_django() -> bool:
    """Put meshwatch's middleware where the contrib instrumentor put its own; False if it is not there."""
    from django.conf import settings

    middleware = list(settings.MIDDLEWARE)
    if CONTRIB_DJANGO_MIDDLEWARE not in middleware:
        return False
    middleware[middleware.index(CONTRIB_DJANGO_MIDDLEWARE)] = DJANGO_MIDDLEWARE
    settings.MIDDLEWARE = middleware
    return True
