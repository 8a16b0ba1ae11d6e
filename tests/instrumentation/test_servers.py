"""The same apps under every server and worker model users run them with, counted at an OTLP sink.

Each request must be exactly one server span named by its route, from the worker
that served it, with ``http.server.request.duration`` by route: no server or
worker model may lose, double or mis-name them (the servers' own spans for plain apps,
``_server_hooks``, must step aside for the frameworks' spans: test_server_spans.py).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from meshwatch.collector.otlp_sink import otlp_sink, sink_env
from meshwatch.stack import free_port
from meshwatch.stack.testing import eventually

from ._helpers import base_env, running, start

pytestmark = pytest.mark.integration

REQUESTS = 12
SPAN_KIND_SERVER = 2

#: uvicorn --workers and gunicorn's sync workers are in test_zero_code.py (against Jaeger and Prometheus).
SERVERS = {
    # name: (argv, path prefix, route)
    "uvicorn --workers 2": (
        ["uvicorn", "pricing:app", "--port", "{port}", "--workers", "2"],
        "/price/",
        "/price/{item}",
    ),
    "gunicorn -k uvicorn_worker": (
        ["gunicorn", "-w", "2", "-k", "uvicorn_worker.UvicornWorker", "-b", "127.0.0.1:{port}", "pricing:app"],
        "/price/",
        "/price/{item}",
    ),
    "hypercorn": (["hypercorn", "-b", "127.0.0.1:{port}", "pricing:app"], "/price/", "/price/{item}"),
    "gunicorn -k asgi": (
        ["gunicorn", "-w", "2", "-k", "asgi", "-b", "127.0.0.1:{port}", "pricing:app"],
        "/price/",
        "/price/{item}",
    ),
    "gunicorn gthread (Flask)": (
        ["gunicorn", "-w", "2", "-k", "gthread", "--threads", "4", "-b", "127.0.0.1:{port}", "inventory:app"],
        "/stock/",
        "/stock/<int:item>",
    ),
}


@pytest.mark.parametrize("server", list(SERVERS))
def test_one_server_span_per_request_by_route(server: str, tmp_path: Path) -> None:
    argv, prefix, route = SERVERS[server]
    port = free_port()
    with otlp_sink() as sink:
        env = base_env(**sink_env(sink, OTEL_SERVICE_NAME="servers", OTEL_BSP_SCHEDULE_DELAY="200"))
        service = start(
            server.split(maxsplit=1)[0],
            ["meshwatch-run", *(a.format(port=port) for a in argv)],
            env,
            tmp_path,
            port=port,
            ready_path=f"{prefix}0",
        )
        with running(service):
            for item in range(1, REQUESTS + 1):
                with urllib.request.urlopen(f"{service.url}{prefix}{item}", timeout=10) as response:
                    assert response.status == 200

            def ours() -> list:
                with sink.lock:
                    return [
                        s
                        for s in sink.spans
                        if s.kind == SPAN_KIND_SERVER
                        and s.attributes.get("url.path", "").startswith(prefix)
                        and s.attributes.get("url.path") != f"{prefix}0"
                    ]

            eventually(lambda: len(ours()) >= REQUESTS, timeout=20, what=f"{REQUESTS} server spans from {server}")
            spans = ours()
            assert len(spans) == REQUESTS, f"{len(spans)} server spans for {REQUESTS} requests"
            assert {s.attributes.get("http.route") for s in spans} == {route}
            assert len({s.attributes["url.path"] for s in spans}) == REQUESTS

            def red() -> bool:
                with sink.lock:
                    return any(
                        p.metric == "http.server.request.duration" and p.attributes.get("http.route") == route
                        for p in sink.points
                    )

            eventually(red, timeout=20, what="http.server.request.duration by http.route")
