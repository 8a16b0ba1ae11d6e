"""meshwatch's FastAPI server span (``meshwatch._asgi``): names, attributes, errors, parents, routes.

Pure logic: the middleware is driven through FastAPI's ASGI interface with an SDK
TracerProvider and an in-memory exporter (no global state, no server); the last test
runs ``init()`` in a child process to show which path the setting selects. Where
FastAPI's own telemetry also makes a server span, the two are compared for the
same requests, so a FastAPI release that changes how routes are resolved shows
up here as a difference in ``http.route``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, HTTPException, WebSocket
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meshwatch._asgi import ServerSpans

from ._helpers import base_env

_OFF = {"tracing": False, "metrics": False, "logs": False}
_ORIGINAL_CALL = FastAPI.__call__


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _build(**kwargs: Any) -> FastAPI:
    app = FastAPI(**kwargs)

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, Any]:
        return {"item": item_id, "trace_id": format(trace.get_current_span().get_span_context().trace_id, "032x")}

    @app.get("/boom")
    def boom() -> None:
        raise ValueError("kaboom")

    @app.get("/unavailable")
    def unavailable() -> None:
        raise HTTPException(status_code=503)

    users = APIRouter(prefix="/users")

    @users.get("/{uid}")
    def user(uid: str) -> dict[str, str]:
        return {"uid": uid}

    orders = APIRouter(prefix="/orders")

    @orders.get("/{oid}/lines/{line}")
    def line(oid: str, line: int) -> dict[str, Any]:
        return {"oid": oid, "line": line}

    users.include_router(orders)
    app.include_router(users, prefix="/api")
    sub = FastAPI(**kwargs)

    @sub.get("/status/{name}")
    def status(name: str) -> dict[str, str]:
        return {"name": name}

    app.mount("/admin", sub)
    return app


def _request(
    app: Any, path: str, *, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None, method: str = "GET"
) -> tuple[int, list[dict[str, Any]]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"shop.example:8080"), (b"user-agent", b"pytest/1"), *(headers or [])],
        "client": ("127.0.0.1", 50123),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        with contextlib.suppress(ValueError):  # re-raised to the server after the 500 was sent, as Starlette does
            await app(scope, receive, send)

    asyncio.run(run())
    return sent[0]["status"], sent


class _Traced:
    """A FastAPI app with FastAPI's telemetry off, called through meshwatch's ServerSpans."""

    def __init__(self) -> None:
        self.provider, self.exporter = _provider()
        self.app = _build(telemetry=_OFF)
        self.spans = ServerSpans(tracer_provider=self.provider)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.spans(_ORIGINAL_CALL, self.app, scope, receive, send)

    def only_span(self) -> Any:
        (span,) = self.exporter.get_finished_spans()
        return span


@pytest.fixture
def traced() -> _Traced:
    return _Traced()


def test_200_span_name_kind_and_attributes(traced: _Traced) -> None:
    status, _ = _request(traced, "/items/42")
    assert status == 200
    span = traced.only_span()
    assert span.name == "GET /items/{item_id}"
    assert span.kind is SpanKind.SERVER
    assert dict(span.attributes) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/items/42",
        "network.protocol.version": "1.1",
        "server.address": "shop.example",
        "server.port": 8080,
        "client.address": "127.0.0.1",
        "client.port": 50123,
        "user_agent.original": "pytest/1",
        "http.route": "/items/{item_id}",
        "http.response.status_code": 200,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.parent is None


def test_the_handler_runs_inside_the_span(traced: _Traced) -> None:
    _, sent = _request(traced, "/items/7")
    body = sent[1]["body"].decode()
    assert format(traced.only_span().context.trace_id, "032x") in body


def test_404_unmatched_route_is_named_by_method_only(traced: _Traced) -> None:
    status, _ = _request(traced, "/no/such/page")
    assert status == 404
    span = traced.only_span()
    assert span.name == "GET"
    assert "http.route" not in span.attributes
    assert span.attributes["http.response.status_code"] == 404
    assert "error.type" not in span.attributes
    assert span.status.status_code is StatusCode.UNSET


def test_500_raised_exception_is_recorded_with_its_type(traced: _Traced) -> None:
    status, _ = _request(traced, "/boom")
    assert status == 500
    span = traced.only_span()
    assert span.name == "GET /boom"
    assert span.attributes["http.response.status_code"] == 500
    assert span.attributes["error.type"] == "ValueError"
    assert span.status.status_code is StatusCode.ERROR
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "kaboom"


def test_5xx_response_without_exception_is_an_error_by_status(traced: _Traced) -> None:
    status, _ = _request(traced, "/unavailable")
    assert status == 503
    span = traced.only_span()
    assert span.attributes["error.type"] == "503"
    assert span.status.status_code is StatusCode.ERROR


def test_propagated_parent_is_the_span_parent(traced: _Traced) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    _request(traced, "/hello", headers=[(b"traceparent", f"00-{trace_id}-{parent_id}-01".encode())])
    span = traced.only_span()
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and span.parent.is_remote
    assert format(span.parent.span_id, "016x") == parent_id


def test_query_string_is_kept_with_signatures_redacted(traced: _Traced) -> None:
    _request(traced, "/hello", query=b"q=shoes&page=2&sig=secret&empty=")
    assert traced.only_span().attributes["url.query"] == "q=shoes&page=2&sig=REDACTED&empty="


def test_unknown_method_is_other(traced: _Traced) -> None:
    status, _ = _request(traced, "/hello", method="BREW")
    assert status == 405
    span = traced.only_span()
    assert span.name.startswith("HTTP")
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "BREW"


def test_routes_through_included_routers_and_mounts(traced: _Traced) -> None:
    _request(traced, "/api/users/ada")
    _request(traced, "/api/users/orders/o-1/lines/3")
    _request(traced, "/admin/status/db")
    names = [s.name for s in traced.exporter.get_finished_spans()]
    assert names == ["GET /api/users/{uid}", "GET /api/users/orders/{oid}/lines/{line}", "GET /admin/status/{name}"]


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/hello", b""),
        ("/items/3", b"a=1&X-Amz-Signature=s"),
        ("/boom", b""),
        ("/unavailable", b""),
        ("/nothing-here", b""),
        ("/api/users/ada", b""),
        ("/api/users/orders/o-1/lines/3", b""),
        ("/admin/status/db", b""),
    ],
)
def test_same_span_as_fastapi_native_telemetry(traced: _Traced, path: str, query: bytes) -> None:
    native_provider, native_exporter = _provider()
    native = _build(
        telemetry={"tracer_provider": native_provider, "metrics": False, "logs": False, "operation_spans": False}
    )
    native_status, _ = _request(native, path, query=query)
    status, _ = _request(traced, path, query=query)
    assert status == native_status
    (expected,) = native_exporter.get_finished_spans()
    span = traced.only_span()
    assert span.name == expected.name
    assert span.kind is expected.kind
    assert span.status.status_code is expected.status.status_code
    # meshwatch adds the recommended client address and user agent; everything FastAPI sets is the same.
    extra = ("client.address", "client.port", "user_agent.original")
    ours = {k: v for k, v in span.attributes.items() if k not in extra}
    assert ours == dict(expected.attributes)


def test_excluded_urls_make_no_span() -> None:
    provider, exporter = _provider()
    app = _build(telemetry=_OFF)
    spans = ServerSpans([re.compile("/hello")], tracer_provider=provider)

    async def traced(scope: Any, receive: Any, send: Any) -> None:
        await spans(_ORIGINAL_CALL, app, scope, receive, send)

    assert _request(traced, "/hello")[0] == 200
    assert _request(traced, "/items/1")[0] == 200
    assert [s.name for s in exporter.get_finished_spans()] == ["GET /items/{item_id}"]


def test_websocket_connection_is_one_span() -> None:
    provider, exporter = _provider()
    app = FastAPI(telemetry=_OFF)

    @app.websocket("/ws/{room}")
    async def echo(websocket: WebSocket, room: str) -> None:
        await websocket.accept()
        await websocket.send_text(room + ":" + await websocket.receive_text())
        await websocket.close()

    spans = ServerSpans(tracer_provider=provider)
    incoming = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hi"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws/lobby",
        "raw_path": b"/ws/lobby",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"chat.example")],
        "client": ("127.0.0.1", 50124),
        "server": ("127.0.0.1", 8000),
        "subprotocols": [],
    }
    asyncio.run(spans(_ORIGINAL_CALL, app, scope, receive, send))
    assert {"type": "websocket.send", "text": "lobby:hi"} in [{k: m.get(k) for k in ("type", "text")} for m in sent]
    (span,) = exporter.get_finished_spans()
    assert span.name == "WS /ws/{room}"
    assert span.attributes["network.protocol.name"] == "websocket"
    assert span.attributes["http.route"] == "/ws/{room}"
    assert span.attributes["server.address"] == "chat.example"
    assert span.attributes["server.port"] == 80
    assert span.status.status_code is StatusCode.UNSET


def test_an_app_with_fastapi_telemetry_on_still_gets_one_server_span() -> None:
    # e.g. an app created before meshwatch.init(), or with its own telemetry= settings
    provider, exporter = _provider()
    app = _build(telemetry={"tracer_provider": provider, "operation_spans": True, "metrics": False, "logs": False})
    spans = ServerSpans(tracer_provider=provider)

    async def traced(scope: Any, receive: Any, send: Any) -> None:
        await spans(_ORIGINAL_CALL, app, scope, receive, send)

    assert _request(traced, "/items/5")[0] == 200
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /items/{item_id}"
    assert span.instrumentation_scope.name == "meshwatch.asgi"


_WHICH_SPANS = """
import json
from meshwatch.testing import capture
attached = capture()  # initialises meshwatch (exporting nowhere), settings from the environment
captured = next(attached)
from fastapi import FastAPI
from fastapi.testclient import TestClient
import meshwatch

early = FastAPI()  # both apps are created after init(); `late` is handed to instrument_app as well
late = FastAPI()

@early.get("/a/{x}")
def a(x: int):
    return {}

@late.get("/b/{y}")
def b(y: int):
    return {}

meshwatch.instrument_app(late)
for app, path in ((early, "/a/1"), (late, "/b/2")):
    assert TestClient(app).get(path).status_code == 200
print(json.dumps({"spans": sorted([s.name, s.instrumentation_scope.name] for s in captured.spans
                                  if s.kind.name == "SERVER")}))
"""


@pytest.mark.parametrize(
    ("env", "scope"),
    [({}, "meshwatch.asgi"), ({"MESHWATCH_FASTAPI_MIDDLEWARE": "false"}, "fastapi")],
    ids=["default-meshwatch-middleware", "setting-back-to-fastapi-native"],
)
def test_init_uses_the_middleware_unless_told_not_to(tmp_path: Any, env: dict[str, str], scope: str) -> None:
    script = tmp_path / "which.py"
    script.write_text(_WHICH_SPANS)
    result = subprocess.run(
        [sys.executable, str(script)], env=base_env(**env), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [json.loads(x) for x in result.stdout.splitlines() if x.startswith('{"spans"')]
    if scope == "fastapi":  # instrument_app adds the contrib middleware, and FastAPI's telemetry stands aside
        assert line["spans"] == [["GET /a/{x}", "fastapi"], ["GET /b/{y}", "opentelemetry.instrumentation.fastapi"]]
    else:  # one span per request, instrument_app changing nothing
        assert line["spans"] == [["GET /a/{x}", scope], ["GET /b/{y}", scope]]
