"""The server-level span wrappers (``_app_spans``), the owner rule (``_span_owners``) and the hooks' guards.

In process, each wrapper with its own SDK TracerProvider and in-memory exporter: what a
plain WSGI app's span carries whichever way it answers (list, late ``start_response`` in a
generator, an exception before or while producing the body, the server's file wrapper), a
plain ASGI app's the same, which applications count as traced already, and that a wrapping
that fails leaves the application serving, with one warning line. The real servers are in
test_server_spans.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meshwatch import _app_spans, _server_hooks, _span_owners
from meshwatch._app_spans import AsgiAppSpans, WsgiAppSpans, wrap_asgi, wrap_wsgi

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


def _environ(path: str, **extra: Any) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.url_scheme": "http",
        **extra,
    }


def _serve(app: Any, environ: dict[str, Any]) -> tuple[list[str], bytes]:
    """What a WSGI server does: call, iterate, close."""
    statuses: list[str] = []
    body = app(environ, lambda status, headers, *exc: statuses.append(status))
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return statuses, data


#: The span current while _late_app produces its body, as it saw it.
_CURRENT: list[Any] = []


def _late_app(environ: dict[str, Any], start_response: Any) -> Any:
    """A generator app: ``start_response`` at its first iteration; notes the current span meanwhile."""

    def body() -> Any:
        start_response("201 Created", [])
        _CURRENT.append(trace.get_current_span().get_span_context())
        yield b"made"

    return body()


def test_wsgi_generator_body_is_timed_to_its_end_with_its_late_status(provider: Any) -> None:
    tracer_provider, exporter = provider
    app = WsgiAppSpans(_late_app, tracer_provider=tracer_provider)
    _CURRENT.clear()
    assert _serve(app, _environ("/made", HTTP_TRACEPARENT=TRACEPARENT)) == (["201 Created"], b"made")
    (server,) = exporter.get_finished_spans()
    assert (server.name, server.kind) == ("GET", SpanKind.SERVER)
    assert server.attributes["http.response.status_code"] == 201
    assert server.attributes["url.path"] == "/made"  # no RAW_URI here: the path from PATH_INFO
    assert format(server.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert [server.context] == _CURRENT, "the span is current while the body is produced"
    assert trace.get_current_span() is trace.INVALID_SPAN  # and detached after


def test_wsgi_exception_before_and_while_answering(provider: Any) -> None:
    tracer_provider, exporter = provider

    def raises(environ: Any, start_response: Any) -> Any:
        raise RuntimeError("before")

    def breaks(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        yield b"half"
        raise ValueError("while")

    with pytest.raises(RuntimeError, match="before"):
        _serve(WsgiAppSpans(raises, tracer_provider=tracer_provider), _environ("/a"))
    with pytest.raises(ValueError, match="while"):
        _serve(WsgiAppSpans(breaks, tracer_provider=tracer_provider), _environ("/b"))
    first, second = exporter.get_finished_spans()
    for span, kind in ((first, "RuntimeError"), (second, "ValueError")):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == kind
        assert [e.name for e in span.events] == ["exception"]


def test_wsgi_list_body_and_file_wrapper_end_at_return(provider: Any) -> None:
    tracer_provider, exporter = provider

    class FileWrapper:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def __iter__(self) -> Any:
            return iter([self.data])

    def listing(environ: Any, start_response: Any) -> Any:
        start_response("404 Not Found", [])
        return [b"no"]

    def sendfile(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](b"file")

    assert WsgiAppSpans(listing, tracer_provider=tracer_provider)(_environ("/x"), lambda *a: None) == [b"no"]
    result = WsgiAppSpans(sendfile, tracer_provider=tracer_provider)(
        _environ("/f", **{"wsgi.file_wrapper": FileWrapper}), lambda *a: None
    )
    assert type(result) is FileWrapper  # the server can still sendfile() it
    missing, sent = exporter.get_finished_spans()  # both ended without iterating
    assert missing.attributes["http.response.status_code"] == 404 and missing.status.status_code is StatusCode.UNSET
    assert sent.attributes["http.response.status_code"] == 200


def test_wsgi_request_already_traced_is_passed_through(provider: Any) -> None:
    tracer_provider, exporter = provider
    outer = WsgiAppSpans(WsgiAppSpans(_late_app, tracer_provider=tracer_provider), tracer_provider=tracer_provider)
    _serve(outer, _environ("/twice"))
    assert [s.name for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER] == ["GET"]


async def _bare_asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["path"] == "/raise":
        raise KeyError("boom")
    await send({"type": "http.response.start", "status": 404 if scope["path"] == "/nope" else 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _asgi_call(app: Any, path: str) -> list[dict[str, Any]]:
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "scheme": "http",
        "http_version": "1.1",
        "query_string": b"",
        "headers": [(b"host", b"example.test"), (b"traceparent", TRACEPARENT.encode())],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_asgi_app_span_is_the_fastapi_span_builder(provider: Any) -> None:
    tracer_provider, exporter = provider
    app = AsgiAppSpans(_bare_asgi, tracer_provider=tracer_provider)
    _asgi_call(app, "/ok")
    _asgi_call(app, "/nope")
    with pytest.raises(KeyError):
        _asgi_call(app, "/raise")
    ok, nope, raised = exporter.get_finished_spans()
    assert (ok.name, ok.kind, ok.attributes["http.response.status_code"]) == ("GET", SpanKind.SERVER, 200)
    assert ok.attributes["server.address"] == "example.test" and "http.route" not in ok.attributes
    assert format(ok.parent.span_id, "016x") == "b7ad6b7169203331"
    assert nope.attributes["http.response.status_code"] == 404 and nope.status.status_code is StatusCode.UNSET
    assert raised.attributes["error.type"] == "KeyError" and [e.name for e in raised.events] == ["exception"]


def test_owner_rule() -> None:
    class Claimed:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...

    class Sub(Claimed): ...

    class Slotted:
        __slots__ = ()

    _span_owners.claim(Claimed, "test framework")
    try:
        assert _span_owners.owner(Claimed()) == "test framework"
        assert _span_owners.owner(Sub()) == "test framework"
    finally:
        _span_owners._CLAIMED.pop(Claimed)
    assert _span_owners.owner(Claimed()) is None
    assert _span_owners.owner(_bare_asgi) is None
    assert _span_owners.owner(Slotted()) is None

    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    assert _span_owners.owner(OpenTelemetryMiddleware(_bare_asgi)) == "contrib instrumentation class"

    class _InstrumentedFalconAPI:  # what FalconInstrumentor.instrument() puts in falcon.App's place
        def __call__(self, environ: Any, start_response: Any) -> Any: ...

    _InstrumentedFalconAPI.__module__ = "opentelemetry.instrumentation.falcon"

    class UserApp(_InstrumentedFalconAPI): ...

    assert _span_owners.owner(UserApp()) == "contrib instrumentation class"
    assert wrap_asgi(OpenTelemetryMiddleware(_bare_asgi), "test").__class__ is OpenTelemetryMiddleware

    flask = pytest.importorskip("flask")
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    app = flask.Flask("owned")
    FlaskInstrumentor.instrument_app(app)
    try:
        assert _span_owners.owner(app) == "contrib instrumentor"
        assert wrap_wsgi(app, "test") is app
    finally:
        FlaskInstrumentor.uninstrument_app(app)


def test_a_wrapping_that_fails_leaves_the_app_serving(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no tracer today")

    monkeypatch.setattr(_app_spans, "AsgiAppSpans", broken)
    monkeypatch.setattr(_app_spans, "owner", lambda app: (_ for _ in ()).throw(LookupError("odd app")))
    with caplog.at_level(logging.WARNING, logger="meshwatch"):
        assert wrap_asgi(_bare_asgi, "uvicorn") is _bare_asgi
        assert wrap_wsgi(_late_app, "gunicorn") is _late_app
    lines = [r.getMessage() for r in caplog.records if r.name == "meshwatch"]
    assert len(lines) == 2, lines  # one line per app
    assert "no server-level spans for the ASGI app under uvicorn" in lines[0] and "odd app" in lines[0]
    assert _asgi_call(_bare_asgi, "/ok")[0]["status"] == 200


def test_hooks_wrap_once_and_obey_the_switch() -> None:
    seen: list[Any] = []

    class Server:
        def load(self) -> str:
            return "loaded"

    enabled = _server_hooks._ENABLED[0]
    try:
        _server_hooks._ENABLED[0] = True
        _server_hooks._after(Server, "load", "test", seen.append)
        _server_hooks._after(Server, "load", "test", seen.append)  # a second init(): no second wrapper
        server = Server()
        assert server.load() == "loaded" and seen == [server]
        _server_hooks._ENABLED[0] = False  # MESHWATCH_SERVER_SPANS=false at a later init()
        assert server.load() == "loaded" and seen == [server]
        assert _server_hooks.hook_servers(False, (), lambda *a: pytest.fail("hooked while off")) == []
    finally:
        _server_hooks._ENABLED[0] = enabled
