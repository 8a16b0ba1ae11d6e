"""meshwatch's WSGI server span (``meshwatch._wsgi``) against the contrib Flask and Django instrumentors.

The same requests go through an app traced by the contrib instrumentor and an app traced by
meshwatch's span, each with its own SDK TracerProvider and in-memory exporter, and the two
spans of each request are compared: name, kind, attributes, status (code and description),
events (the recorded exception) and parent. A contrib release that changes what its spans
carry, or a change here, shows up as a difference. Django runs in a child process (its
settings are process-wide); the last tests run ``init()`` in a child process to show which
path each setting selects.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ._helpers import base_env

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

#: (method, path, headers): the requests both apps get
REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/hello", {"User-Agent": "curl/8.5"}),
    ("GET", "/items/42?q=1", {"traceparent": TRACEPARENT, "User-Agent": "python-requests/2.32"}),
    ("POST", "/items/7", {}),  # 405
    ("GET", "/nope", {}),  # 404: no route
    ("GET", "/boom", {}),  # unhandled exception: 500
    ("GET", "/unavailable", {}),  # returned 503, no exception
    ("PURGE", "/hello", {}),  # unknown method
    ("GET", "/hello", {"User-Agent": "Googlebot/2.1"}),  # synthetic user agent
]


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _summary(span: Any) -> dict[str, Any]:
    """What a user sees of a server span in Jaeger and in the RED metrics (not ids and times)."""
    return {
        "name": span.name,
        "kind": span.kind.name,
        "attributes": dict(span.attributes),
        "status": [span.status.status_code.name, span.status.description],
        "events": [
            (e.name, {k: v for k, v in e.attributes.items() if k in ("exception.type", "exception.message")})
            for e in span.events
        ],
        "parent": format(span.parent.span_id, "016x") if span.parent else None,
        "trace": format(span.context.trace_id, "032x") if span.parent else None,
    }


def _flask_app() -> Any:
    from flask import Flask

    app = Flask("parity")

    @app.route("/hello", methods=["GET", "PURGE"])
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.get("/boom")
    def boom() -> None:
        raise ValueError("kaboom")

    @app.get("/unavailable")
    def unavailable() -> tuple[str, int]:
        return "down", 503

    return app


@pytest.fixture
def stable_http(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The stable HTTP semantic conventions, as ``init()`` opts in to them, for the contrib instrumentor too."""
    from opentelemetry.instrumentation._semconv import _OpenTelemetrySemanticConventionStability as Stability

    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    Stability._initialized = False
    Stability._initialize()
    yield
    monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN")
    Stability._initialized = False
    Stability._initialize()


@pytest.fixture
def meshwatch_flask(stable_http: None) -> Any:
    """meshwatch's span on every Flask app, with its own provider; Flask restored afterwards."""
    import flask
    from flask.signals import got_request_exception

    from meshwatch import _wsgi

    original = flask.Flask.wsgi_app
    provider, exporter = _provider()
    _wsgi.use_for_flask(tracer_provider=provider)
    try:
        yield exporter
    finally:
        flask.Flask.wsgi_app = original  # type: ignore[method-assign]
        got_request_exception.disconnect(_wsgi._flask_exception)


def test_flask_spans_are_the_contrib_instrumentors(meshwatch_flask: InMemorySpanExporter) -> None:
    import flask
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.metrics import NoOpMeterProvider

    contrib_provider, contrib_exporter = _provider()
    contrib_app = _flask_app()
    # instrument_app wraps this one instance's wsgi_app around the original class method
    contrib_app.wsgi_app = flask.Flask.wsgi_app.__wrapped__.__get__(contrib_app)  # type: ignore[attr-defined]
    FlaskInstrumentor.instrument_app(contrib_app, tracer_provider=contrib_provider, meter_provider=NoOpMeterProvider())
    meshwatch_app = _flask_app()
    for method, path, headers in REQUESTS:
        for app in (contrib_app, meshwatch_app):
            app.test_client().open(path, method=method, headers=headers)
    contrib = [_summary(s) for s in contrib_exporter.get_finished_spans()]
    ours = [_summary(s) for s in meshwatch_flask.get_finished_spans()]
    assert len(contrib) == len(ours) == len(REQUESTS)
    for request, theirs, mine in zip(REQUESTS, contrib, ours, strict=True):
        assert mine == theirs, f"{request}: meshwatch {mine} != contrib {theirs}"
    # the planted differences a regression would make are visible in what was compared
    assert ours[1]["attributes"]["http.route"] == "/items/<int:item_id>"
    assert ours[1]["trace"] == "0af7651916cd43dd8448eb211c80319c"
    assert ours[4]["status"] == ["ERROR", "ValueError: kaboom"]
    assert ours[5]["status"] == ["ERROR", None] and ours[5]["attributes"]["http.response.status_code"] == 503
    assert ours[5]["attributes"]["error.type"] == "503"
    assert ours[6]["attributes"]["http.request.method"] == "_OTHER" and ours[6]["name"] == "HTTP /hello"
    assert ours[3]["name"] == "GET /nope" and "http.route" not in ours[3]["attributes"]
    assert ours[7]["attributes"].get("user_agent.synthetic.type") == "bot"


def test_flask_span_is_current_in_the_view_and_nested_apps_make_one(meshwatch_flask: InMemorySpanExporter) -> None:
    from flask import Flask
    from opentelemetry import trace

    app = Flask("current")

    @app.get("/id")
    def current() -> dict[str, str]:
        return {"trace_id": format(trace.get_current_span().get_span_context().trace_id, "032x")}

    body = app.test_client().get("/id", headers={"traceparent": TRACEPARENT}).get_json()
    assert body["trace_id"] == "0af7651916cd43dd8448eb211c80319c", "logs and child spans join the request's trace"
    assert trace.get_current_span() is trace.INVALID_SPAN, "the context is detached after the request"
    [span] = meshwatch_flask.get_finished_spans()
    assert span.kind.name == "SERVER" and span.name == "GET /id"


DJANGO_SCRIPT = """
import json, sys
import django
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.urls import path

def hello(request):
    return JsonResponse({"hello": "world"})

def item(request, item_id):
    return JsonResponse({"item": item_id})

def boom(request):
    raise ValueError("kaboom")

def unavailable(request):
    return HttpResponse("down", status=503)

def current(request):
    from opentelemetry import trace
    return JsonResponse({"trace_id": format(trace.get_current_span().get_span_context().trace_id, "032x")})

urlpatterns = [
    path("hello", hello, name="hello"),
    path("items/<int:item_id>", item),
    path("boom", boom),
    path("unavailable", unavailable),
    path("id", current),
]
settings.configure(
    ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], DEBUG=False, SECRET_KEY="x",
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"], LOGGING_CONFIG=None,
)
django.setup()

from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.instrumentation.django import DjangoInstrumentor
from django.test import Client
from meshwatch import _wsgi

def provider():
    exporter = InMemorySpanExporter()
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exporter))
    return p, exporter

contrib_provider, contrib_exporter = provider()
DjangoInstrumentor().instrument(tracer_provider=contrib_provider, meter_provider=NoOpMeterProvider())
contrib = Client(raise_request_exception=False)
contrib.get("/hello")  # loads its middleware now: the contrib one
contrib_exporter.clear()
assert _wsgi.use_for_django(), settings.MIDDLEWARE
meshwatch_provider, meshwatch_exporter = provider()
_wsgi._DJANGO_SPANS.tracer_provider = meshwatch_provider
ours = Client(raise_request_exception=False)
requests = json.loads(sys.argv[1])
for method, path_, headers in requests:
    for client in (contrib, ours):
        client.generic(method, path_, headers=headers)

seen = ours.get("/id", headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}).json()

def summary(span):
    return {
        "name": span.name, "kind": span.kind.name, "attributes": dict(span.attributes),
        "status": [span.status.status_code.name, span.status.description],
        "events": [[e.name, {k: v for k, v in e.attributes.items() if k in ("exception.type", "exception.message")}]
                   for e in span.events],
        "parent": format(span.parent.span_id, "016x") if span.parent else None,
        "scope": span.instrumentation_scope.name,
    }

print(json.dumps({
    "middleware": list(settings.MIDDLEWARE),
    "contrib": [summary(s) for s in contrib_exporter.get_finished_spans()],
    "meshwatch": [summary(s) for s in meshwatch_exporter.get_finished_spans()][:len(requests)],
    "in_view": seen["trace_id"],
}))
"""


def test_django_spans_are_the_contrib_middlewares(tmp_path: Path) -> None:
    script = tmp_path / "django_parity.py"
    script.write_text(textwrap.dedent(DJANGO_SCRIPT))
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(REQUESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        env=base_env(OTEL_SEMCONV_STABILITY_OPT_IN="http"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["middleware"][0] == "meshwatch._wsgi.DjangoServerSpans", "took the contrib middleware's place"
    contrib, ours = result["contrib"], result["meshwatch"]
    assert len(contrib) == len(ours) == len(REQUESTS)
    assert {s["scope"] for s in ours} == {"meshwatch.wsgi"}, "the spans compared are meshwatch's"
    for request, theirs, mine in zip(REQUESTS, contrib, ours, strict=True):
        theirs.pop("scope"), mine.pop("scope")
        assert mine == theirs, f"{request}: meshwatch {mine} != contrib {theirs}"
    assert ours[1]["attributes"]["http.route"] == "items/<int:item_id>"
    assert ours[1]["name"] == "GET items/<int:item_id>"
    assert ours[1]["parent"] == "b7ad6b7169203331"
    assert ours[4]["status"] == ["ERROR", "ValueError: kaboom"]
    assert ours[4]["events"] == [["exception", {"exception.type": "ValueError", "exception.message": "kaboom"}]]
    assert ours[3]["name"] == "GET" and "http.route" not in ours[3]["attributes"]
    assert result["in_view"] == "0af7651916cd43dd8448eb211c80319c", "logs and child spans in a view join the trace"


INIT_SCRIPT = """
import json, os, meshwatch
status = meshwatch.init(service_name="wsgi-path", traces_exporter="none", metrics_exporter="none",
                        logs_exporter="none", log_stdout=False)
import flask
from opentelemetry.instrumentation.flask import FlaskInstrumentor
print(json.dumps({"instrumented": status.instrumented,
                  "meshwatch": getattr(flask.Flask.wsgi_app, "_meshwatch", False),
                  "contrib": FlaskInstrumentor().is_instrumented_by_opentelemetry}))
"""


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "meshwatch"),
        ({"MESHWATCH_WSGI_MIDDLEWARE": "false"}, "contrib"),
        ({"OTEL_SEMCONV_STABILITY_OPT_IN": "http/dup"}, "contrib"),
        ({"OTEL_PYTHON_EXCLUDED_URLS": "health"}, "contrib"),
    ],
)
def test_init_uses_meshwatch_span_for_flask_unless_it_cannot_apply(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", INIT_SCRIPT], capture_output=True, text=True, timeout=60, env={**base_env(), **env}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["meshwatch"] is (expected == "meshwatch")
    assert report["contrib"] is (expected == "contrib"), "exactly one of the two traces Flask"
    label = "flask (meshwatch)" if expected == "meshwatch" else "flask"
    assert label in report["instrumented"]
