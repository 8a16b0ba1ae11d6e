"""Apps no framework instrumentation covers get their server spans from the server, under ``meshwatch-run``.

A plain ASGI callable under uvicorn (string app, ``--factory``, ASGI 2, ``--interface wsgi``),
hypercorn and gunicorn's ASGI and uvicorn workers, a plain WSGI callable under gunicorn's sync
and gthread workers and hypercorn, and datasette (a real PyPI app that calls ``uvicorn.run(app)``
itself): each request exactly one server span with the right status, a client's
``traceparent`` continued, the span current inside the app, its logs correlated and
``http.server.request.duration`` by status without an ``http.route``, all counted at an OTLP sink.

The controls: apps a framework instrumentation already traces (Django under gunicorn and
uvicorn, Starlette with its contrib instrumentor, an app wrapped in contrib's
``OpenTelemetryMiddleware``, FastAPI inside middleware meshwatch does not know) still get
exactly one server span per request, and ``MESHWATCH_SERVER_SPANS=false`` makes none.
FastAPI and Flask under every server are counted in test_servers.py.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from meshwatch.collector.otlp_sink import OtlpSink, SpanSeen, otlp_sink, sink_env
from meshwatch.stack import free_port
from meshwatch.stack.testing import eventually

from ._helpers import base_env, running, start
from .test_django import site  # noqa: F401 - the stock startproject site fixture

pytestmark = pytest.mark.integration

SPAN_KIND_SERVER = 2
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
HELLOS = 5


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _server_spans(sink: OtlpSink, ready: str) -> list[SpanSeen]:
    with sink.lock:
        return [s for s in sink.spans if s.kind == SPAN_KIND_SERVER and s.attributes.get("url.path") != ready]


def _env(sink: OtlpSink, name: str, **extra: str) -> dict[str, str]:
    return base_env(
        **sink_env(sink, OTEL_SERVICE_NAME=name, OTEL_BSP_SCHEDULE_DELAY="200", OTEL_METRIC_EXPORT_INTERVAL="500"),
        **extra,
    )


def _durations(sink: OtlpSink) -> list[dict[str, Any]]:
    with sink.lock:
        return [p.attributes for p in sink.points if p.metric == "http.server.request.duration" and (p.count or 0)]


#: name: (argv, whether the app is the plain WSGI one). Plain ASGI callable: bare_asgi.
BARE = {
    "uvicorn": (["uvicorn", "bare_asgi:app", "--port", "{port}"], False),
    "uvicorn --factory": (["uvicorn", "bare_asgi:make_app", "--factory", "--port", "{port}"], False),
    "uvicorn asgi2": (["uvicorn", "bare_asgi:App2", "--interface", "asgi2", "--port", "{port}"], False),
    "uvicorn wsgi": (["uvicorn", "bare_wsgi:app", "--interface", "wsgi", "--port", "{port}"], True),
    "hypercorn": (["hypercorn", "-b", "127.0.0.1:{port}", "bare_asgi:app"], False),
    "hypercorn wsgi": (["hypercorn", "-b", "127.0.0.1:{port}", "wsgi:bare_wsgi:app"], True),
    "gunicorn sync": (["gunicorn", "-w", "2", "-b", "127.0.0.1:{port}", "bare_wsgi:app"], True),
    "gunicorn gthread": (
        ["gunicorn", "-k", "gthread", "--threads", "4", "-b", "127.0.0.1:{port}", "bare_wsgi:app"],
        True,
    ),
    "gunicorn -k asgi": (["gunicorn", "-k", "asgi", "-b", "127.0.0.1:{port}", "bare_asgi:app"], False),
    "gunicorn -k uvicorn_worker": (
        ["gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-b", "127.0.0.1:{port}", "bare_asgi:app"],
        False,
    ),
}


@pytest.mark.parametrize("server", list(BARE))
def test_a_plain_app_gets_one_server_span_per_request(server: str, tmp_path: Path) -> None:
    argv, wsgi = BARE[server]
    port = free_port()
    ready = "/hello/ready"
    with otlp_sink() as sink:
        service = start(
            server.split(maxsplit=1)[0],
            ["meshwatch-run", *(a.format(port=port) for a in argv)],
            _env(sink, "bare"),
            tmp_path,
            port=port,
            ready_path=ready,
        )
        with running(service):
            for i in range(HELLOS):
                # uvicorn trusts X-Forwarded-For from loopback by default; the span goes inside its proxy-headers layer
                assert _get(f"{service.url}/hello/{i}", {"X-Forwarded-For": "203.0.113.7"})[0] == 200
            assert _get(f"{service.url}/hello/traced", {"traceparent": TRACEPARENT})[0] == 200
            assert _get(f"{service.url}/missing")[0] == 404
            assert _get(f"{service.url}/fail")[0] == 500
            assert _get(f"{service.url}/raise")[0] == 500  # the server's own answer to the exception
            code, inner = _get(f"{service.url}/inner", {"traceparent": TRACEPARENT})
            assert code == 200
            paths = [*(f"/hello/{i}" for i in range(HELLOS)), "/hello/traced", "/missing", "/fail", "/raise", "/inner"]
            if wsgi:
                assert _get(f"{service.url}/stream") == (200, b"one two three")
                paths.append("/stream")

            eventually(
                lambda: len(_server_spans(sink, ready)) >= len(paths), timeout=10, what=f"{len(paths)} server spans"
            )
            eventually(lambda: any(p.get("http.response.status_code") == 500 for p in _durations(sink)), timeout=10)
            spans = _server_spans(sink, ready)
            by_path = {s.attributes["url.path"]: s for s in spans}
            assert sorted(s.attributes["url.path"] for s in spans) == sorted(paths), "one server span per request"
            for span in spans:
                assert span.name == "GET" and "http.route" not in span.attributes, span
                assert span.attributes["http.request.method"] == "GET"
            assert by_path["/hello/1"].attributes["http.response.status_code"] == 200
            if argv[0] == "uvicorn":
                assert by_path["/hello/1"].attributes["client.address"] == "203.0.113.7"
            assert not by_path["/hello/1"].error
            assert by_path["/missing"].attributes["http.response.status_code"] == 404
            assert not by_path["/missing"].error  # a 404 is the client's error, not the server's
            assert by_path["/fail"].attributes["http.response.status_code"] == 500
            assert by_path["/fail"].error and by_path["/fail"].attributes["error.type"] == "500"
            raised = by_path["/raise"]
            assert raised.error and raised.attributes["error.type"] == "RuntimeError"
            assert "exception" in raised.events
            if wsgi:
                assert by_path["/stream"].attributes["http.response.status_code"] == 200  # set while iterating
            traced = by_path["/hello/traced"]
            assert (traced.trace_id, traced.parent_id) == (TRACE_ID, PARENT_ID), "the client's trace continues"
            assert inner.decode() == TRACE_ID, "the server span is current inside the app"

            # RED metrics from these spans: by method and status, no http.route (none is known)
            durations = _durations(sink)
            assert {p.get("http.response.status_code") for p in durations} >= {200, 404, 500}
            assert all("http.route" not in p for p in durations)
            with sink.lock:
                hello_logs = [log for log in sink.logs if log.body == "said hello"]
            assert {log.trace_id for log in hello_logs} >= {traced.trace_id}, "the app's log is in the span's trace"


def test_datasette_under_meshwatch_run(tmp_path: Path) -> None:
    """datasette 0.65 (plain ASGI, its own ``uvicorn.run(app)``): every page one server span, by status."""
    pytest.importorskip("datasette")
    db = tmp_path / "ds.db"
    with sqlite3.connect(db) as connection:
        connection.execute("create table t(id integer primary key, name text)")
        connection.executemany("insert into t(name) values (?)", [(f"n{i}",) for i in range(20)])
    port = free_port()
    with otlp_sink() as sink:
        service = start(
            "datasette",
            ["meshwatch-run", "datasette", "serve", str(db), "--port", str(port)],
            _env(sink, "datasette"),
            tmp_path,
            port=port,
            ready_path="/-/versions.json",
        )
        with running(service):
            asked = {"/": 200, "/ds": 200, "/ds/t": 200, "/ds/t/3": 200, "/ds/t.json": 200, "/nope": 404}
            for path, expected in asked.items():
                headers = {"traceparent": TRACEPARENT} if path == "/ds/t" else None
                assert _get(f"{service.url}{path}", headers)[0] == expected, path
            ready = "/-/versions.json"
            eventually(lambda: len(_server_spans(sink, ready)) >= len(asked), timeout=10, what="datasette spans")
            eventually(lambda: any(p.get("http.response.status_code") == 404 for p in _durations(sink)), timeout=10)
            spans = _server_spans(sink, ready)
            assert sorted(s.attributes["url.path"] for s in spans) == sorted(asked), "one server span per page"
            codes = {s.attributes["url.path"]: s.attributes.get("http.response.status_code") for s in spans}
            assert codes == asked
            assert {s.name for s in spans} == {"GET"}
            traced = next(s for s in spans if s.attributes["url.path"] == "/ds/t")
            assert (traced.trace_id, traced.parent_id) == (TRACE_ID, PARENT_ID)
            assert all(s.resource.get("service.name") == "datasette" for s in spans)


#: Apps a framework instrumentation traces: (argv, path prefix, extra env, the route the span carries).
#: The span is named "GET {route}"; contrib's OpenTelemetryMiddleware names it by path ("GET /hello/1"),
#: which tells its span from the server-level one ("GET").
CONTROLS = {
    "starlette with its contrib instrumentor": (
        ["uvicorn", "bare_starlette:app", "--port", "{port}"],
        "/items/",
        {},
        "/items/{item}",
    ),
    "starlette without it (the server's span, by route)": (
        ["hypercorn", "-b", "127.0.0.1:{port}", "bare_starlette:app"],
        "/items/",
        {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "starlette"},
        "/items/{item}",
    ),
    "contrib OpenTelemetryMiddleware around a plain app": (
        ["uvicorn", "contrib_wrapped:app", "--port", "{port}"],
        "/hello/",
        {},
        None,
    ),
    "Flask under uvicorn --interface wsgi": (
        ["uvicorn", "inventory:app", "--interface", "wsgi", "--port", "{port}"],
        "/stock/",
        {},
        "/stock/<int:item>",
    ),
    "Flask under hypercorn (WSGI)": (
        ["hypercorn", "-b", "127.0.0.1:{port}", "wsgi:inventory:app"],
        "/stock/",
        {},
        "/stock/<int:item>",
    ),
    "FastAPI inside middleware meshwatch does not know": (
        ["gunicorn", "-k", "asgi", "-b", "127.0.0.1:{port}", "wrapped_fastapi:app"],
        "/price/",
        {},
        "/price/{item}",
    ),
}


def _request_spans(sink: OtlpSink, trace_id: str) -> list[SpanSeen]:
    """The spans of one request's trace that stand for the request (contrib's per-message
    "http send" spans carry no request attributes; a framework's span below another is INTERNAL)."""
    with sink.lock:
        return [
            s
            for s in sink.spans
            if s.trace_id == trace_id and (s.kind == SPAN_KIND_SERVER or "http.request.method" in s.attributes)
        ]


@pytest.mark.parametrize("control", list(CONTROLS))
def test_a_framework_traced_app_still_gets_one_server_span(control: str, tmp_path: Path) -> None:
    argv, prefix, extra, route = CONTROLS[control]
    port = free_port()
    traces = [f"{0xA0 + i:032x}" for i in range(1, 7)]  # one trace per request, sent by the client
    with otlp_sink() as sink:
        service = start(
            argv[0],
            ["meshwatch-run", *(a.format(port=port) for a in argv)],
            _env(sink, "control", **extra),
            tmp_path,
            port=port,
            ready_path=f"{prefix}0",
        )
        with running(service):
            for i, trace_id in enumerate(traces, 1):
                headers = {"traceparent": f"00-{trace_id}-{PARENT_ID}-01"}
                assert _get(f"{service.url}{prefix}{i}", headers)[0] == 200
            eventually(lambda: all(_request_spans(sink, t) for t in traces), timeout=10, what="every request's span")
            eventually(lambda: bool(_durations(sink)), timeout=10, what="http.server.request.duration")
            time.sleep(0.5)  # a second span of a request would be in the same batch or the next one
            for i, trace_id in enumerate(traces, 1):
                spans = _request_spans(sink, trace_id)
                assert len(spans) == 1, f"{len(spans)} request spans in one request's trace: {spans}"
                (span,) = spans
                assert span.kind == SPAN_KIND_SERVER and span.parent_id == PARENT_ID
                assert span.attributes.get("http.route") == route
                assert span.name == (f"GET {route}" if route else f"GET {prefix}{i}")
            if route is not None:
                assert {p.get("http.route") for p in _durations(sink)} >= {route}


DJANGO = {
    "gunicorn": ["gunicorn", "-b", "127.0.0.1:{port}", "mysite.wsgi"],
    "uvicorn": ["uvicorn", "--port", "{port}", "mysite.asgi:application"],
}


@pytest.mark.parametrize("server", list(DJANGO))
def test_django_still_gets_one_server_span_per_request(server: str, site: Path, tmp_path: Path) -> None:  # noqa: F811
    port = free_port()
    requests = 4
    with otlp_sink() as sink:
        service = start(
            server,
            ["meshwatch-run", *(a.format(port=port) for a in DJANGO[server])],
            _env(sink, f"django-{server}"),
            tmp_path,
            port=port,
            ready_path="/admin/login/",
            cwd=site,
        )
        with running(service):
            for i in range(requests):
                assert _get(f"{service.url}/admin/login/?n={i}")[0] == 200

            def ours() -> list[SpanSeen]:
                return [s for s in _server_spans(sink, "") if s.attributes.get("url.query", "").startswith("n=")]

            eventually(lambda: len(ours()) >= requests, timeout=10, what=f"{requests} Django spans")
            spans = ours()
            assert len(spans) == requests, f"{len(spans)} server spans for {requests} requests"
            assert {s.attributes.get("http.route") for s in spans} == {"admin/login/"}  # Django's own span


def test_the_switch_turns_server_spans_off(tmp_path: Path) -> None:
    port = free_port()
    with otlp_sink() as sink:
        service = start(
            "uvicorn",
            ["meshwatch-run", "uvicorn", "bare_asgi:app", "--port", str(port)],
            _env(sink, "off", MESHWATCH_SERVER_SPANS="false"),
            tmp_path,
            port=port,
            ready_path="/hello/ready",
        )
        with running(service):
            for i in range(3):
                assert _get(f"{service.url}/hello/{i}")[0] == 200
            # the app's log records still arrive: telemetry flows, only the server's spans are off
            eventually(
                lambda: sum(1 for log in list(sink.logs) if log.body == "said hello") >= 3, timeout=10, what="logs"
            )
            time.sleep(0.5)  # spans go out on the same schedule as logs: any made would be here by now
            assert _server_spans(sink, "/hello/ready") == []
