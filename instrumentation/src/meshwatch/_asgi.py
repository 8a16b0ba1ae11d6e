"""meshwatch's own ASGI server span for FastAPI: one SERVER span per request, nothing else.

Why: on a bare FastAPI ``GET /hello`` FastAPI's built-in telemetry (0.16x) was the
largest part of what meshwatch still added per request. Per request it walks the
middleware stack to look for the contrib middleware, checks which providers are
configured, parses the Host header with ``urlsplit``, builds a ``Headers`` object
twice, attaches three OpenTelemetry contexts and asks for a logger. This
middleware does the one job meshwatch needs — the server span, with the stable
HTTP semantic-convention attributes FastAPI's own span carries — and nothing
else: headers are read once into a dict that also serves as the propagation
carrier, the server address is parsed once per distinct Host value, and one
context is attached (the span's, with the extracted parent).

What the span carries (the names FastAPI's span and the contrib middleware use):
``http.request.method`` (``_OTHER`` for unknown methods, with
``http.request.method_original``), ``url.scheme``, ``url.path``, ``url.query``
(when present; known signature parameters redacted as FastAPI does),
``server.address``/``server.port`` (Host header, else the ASGI ``server``),
``client.address``/``client.port``, ``network.protocol.version``,
``user_agent.original``, then ``http.route`` (the matched route template) and
``http.response.status_code``; on a 5xx, an unhandled exception or an incomplete
response ``error.type`` and status ERROR. Exceptions are recorded on the span as
events. The span is named ``"{method} {route}"``, or just the method when no
route matched (404). WebSocket connections get one span named ``"WS {route}"``.

The route is FastAPI's own routing result read from the scope after routing:
``scope["route"]`` and, for routes reached through ``include_router``, FastAPI's
effective route context (which carries the prefixes), with the mount prefix
(``root_path``) in front, so the template is the one FastAPI's own telemetry
reports (a unit test compares the two on nested routers and mounts). RED
metrics are derived from this span by meshwatch's span processor (``_red.py``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from ._extract import Extractor
from ._logs import tag_exception

__all__ = ["ServerSpans"]

_HTTP_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"})
#: https://opentelemetry.io/docs/specs/semconv/http/http-spans/#http-server-span (as FastAPI redacts them).
_SENSITIVE_QUERY_PARAMETERS = frozenset(
    {"X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "sig", "X-Goog-Signature"}
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_TRACED = frozenset({"http", "websocket"})
_SERVER = SpanKind.SERVER
_ERROR = StatusCode.ERROR
_set_span_in_context = trace.set_span_in_context
_attach = context_api.attach
_detach = context_api.detach
#: Distinct Host header values remembered (a client sending random Host values only refills it).
_HOSTS_MAX = 256

App = Callable[[Any, dict[str, Any], Any, Any], Awaitable[None]]


def _exception_type(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    """ASGI headers (lower-case names) as a dict; repeated headers joined with ``,`` (RFC 9110)."""
    headers: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        key = name.decode("latin-1")
        if key in headers:
            headers[key] = headers[key] + "," + value.decode("latin-1")
        else:
            headers[key] = value.decode("latin-1")
    return headers


def _parse_host(authority: str, scheme: str) -> tuple[tuple[str, Any], ...]:
    try:
        url = urlsplit("//" + authority)
        address, port = url.hostname, url.port
    except ValueError:
        return ()  # a malformed Host header must not prevent handling the request
    if address is None or url.username is not None or url.path or url.query or url.fragment:
        return ()
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    return (("server.address", address),) if port is None else (("server.address", address), ("server.port", port))


def _query(raw: bytes) -> str:
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    return urlencode([(k, "REDACTED" if k in _SENSITIVE_QUERY_PARAMETERS else v) for k, v in pairs])


def route_of(scope: dict[str, Any]) -> str | None:
    """The route template FastAPI matched for this request, mount prefix included; None if none matched."""
    template = None
    fastapi_scope = scope.get("fastapi")
    if fastapi_scope:
        # Routes reached through include_router: the context carries the full template.
        effective = fastapi_scope.get("effective_route_context")
        if effective is not None:
            template = getattr(effective.starlette_route, "path_format", None) or getattr(
                effective, "path_format", None
            )
    if template is None:
        template = getattr(scope.get("route"), "path_format", None)
        if template is None:
            return None
    # Starlette's Mount appends its path to root_path (which starts as the server's --root-path).
    prefix = scope.get("root_path")
    return prefix.rstrip("/") + template if prefix else template


class ServerSpans:
    """Wraps an ASGI application call in one SERVER span per HTTP request or WebSocket connection.

    ``excluded`` are regular expressions matched against the request URL as the
    contrib instrumentors match ``OTEL_PYTHON_EXCLUDED_URLS``.
    """

    def __init__(self, excluded: Sequence[re.Pattern[str]] = (), tracer_provider: Any = None) -> None:
        self._excluded = tuple(excluded)
        self._tracer_provider = tracer_provider  # None: the global one, as it is when the request comes
        self._provider: Any = None
        self._tracer: Any = None
        self._hosts: dict[str, tuple[tuple[str, Any], ...]] = {}
        self._extractor = Extractor(("traceparent", "tracestate", "baggage"))

    def _get_tracer(self) -> Any:
        provider = self._tracer_provider or trace.get_tracer_provider()
        if provider is not self._provider:  # a new provider after fork or re-init
            from . import __version__

            self._tracer = provider.get_tracer("meshwatch.asgi", __version__)
            self._provider = provider
        return self._tracer

    def _is_excluded(self, scope: dict[str, Any]) -> bool:
        server = scope.get("server") or ("", None)
        host = f"{server[0]}:{server[1]}" if server[1] else server[0]
        url = f"{scope.get('scheme', 'http')}://{host}{scope.get('path', '')}"
        return any(p.search(url) for p in self._excluded)

    async def __call__(  # noqa: PLR0915 - one straight path per request, kept inline for speed
        self, call: App, app: Any, scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        kind = scope["type"]
        if kind not in _TRACED or "meshwatch.span" in scope:
            # lifespan, or a FastAPI app mounted inside one already traced
            await call(app, scope, receive, send)
            return
        # FastAPI's own telemetry skips a request whose scope already has this key (its marker for
        # excluded requests): one server span per request even for an app created before init()
        # or with its own telemetry= settings.
        if "fastapi.telemetry" not in scope:
            scope["fastapi.telemetry"] = None
        if self._excluded and self._is_excluded(scope):
            scope["meshwatch.span"] = None
            await call(app, scope, receive, send)
            return
        headers = _headers(scope)
        websocket = kind == "websocket"
        scheme = scope.get("scheme") or ("ws" if websocket else "http")
        attributes: dict[str, Any]
        if websocket:
            method = "WS"
            attributes = {"url.scheme": scheme, "network.protocol.name": "websocket", "url.path": scope["path"]}
        else:
            original = scope.get("method", "")
            if original in _HTTP_METHODS:
                method = original
                attributes = {"http.request.method": method, "url.scheme": scheme, "url.path": scope["path"]}
            else:
                method = "HTTP"
                attributes = {
                    "http.request.method": "_OTHER",
                    "http.request.method_original": original,
                    "url.scheme": scheme,
                    "url.path": scope["path"],
                }
            query = scope.get("query_string")
            if query:
                attributes["url.query"] = _query(query)
            version = scope.get("http_version")
            if version:
                attributes["network.protocol.version"] = version
        host = headers.get("host")
        if host is not None:
            server = self._hosts.get(host)
            if server is None:
                server = _parse_host(host, scheme)
                if len(self._hosts) >= _HOSTS_MAX:
                    self._hosts.clear()
                self._hosts[host] = server
            for key, value in server:
                attributes[key] = value
        else:
            address, port = scope.get("server") or (None, None)
            if address is not None:
                attributes["server.address"] = address
                if port is not None:
                    attributes["server.port"] = port
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
            if client[1] is not None:
                attributes["client.port"] = client[1]
        agent = headers.get("user-agent")
        if agent is not None:
            attributes["user_agent.original"] = agent

        parent = self._extractor.extract(headers)
        span = self._get_tracer().start_span(method, context=parent, kind=_SERVER, attributes=attributes)
        token = _attach(_set_span_in_context(span, parent))
        scope["meshwatch.span"] = span
        status: list[int] = []
        ended = complete = False

        def finish(error: BaseException | None) -> None:
            nonlocal ended
            ended = True
            # An unsampled (record-only) span kept only the sampler's attributes, none of ours:
            # set them again so the RED metrics still count the request by method and scheme.
            end: dict[str, Any] = {} if span.get_span_context().trace_flags & 1 else dict(attributes)
            route = route_of(scope)
            if route is not None:
                end["http.route"] = route
                span.update_name(f"{method} {route}")
            code = status[0] if status else None
            if code is not None:
                end["http.response.status_code"] = code
            if error is not None:
                end["error.type"] = _exception_type(error)
            elif not websocket and (code is None or code >= 500):
                end["error.type"] = str(code) if code is not None else "incomplete_response"
            span.set_attributes(end)
            if "error.type" in end:
                span.set_status(_ERROR)
            span.end()

        if websocket:
            wrapped_send = send
        else:

            async def wrapped_send(message: dict[str, Any]) -> None:
                nonlocal complete
                kind = message["type"]
                if kind == "http.response.start":
                    status.append(message["status"])
                await send(message)
                # A 5xx is finished when the call returns or raises: Starlette's ServerErrorMiddleware
                # sends the 500 before re-raising the exception, whose type the span should carry.
                if (
                    (kind == "http.response.body" and not message.get("more_body", False))
                    or (kind == "http.response.trailers" and not message.get("more_trailers", False))
                    or kind == "http.response.pathsend"
                ):
                    complete = True
                    if not ended and status and status[0] < 500:
                        finish(None)

        try:
            await call(app, scope, receive, wrapped_send)
        except BaseException as exc:
            tag_exception(exc, span.get_span_context())  # the server's crash log then carries the trace id
            if not ended:
                if websocket and _normal_close(exc):
                    finish(None)
                else:
                    if isinstance(exc, Exception):
                        span.record_exception(exc)
                    finish(exc)
            raise
        else:
            if not ended:
                finish(None if websocket or complete else RuntimeError("Incomplete ASGI response"))
        finally:
            _detach(token)


def _normal_close(exc: BaseException) -> bool:
    return type(exc).__name__ == "WebSocketDisconnect" and getattr(exc, "code", None) in (1000, 1001)
