"""The pytest fixture meshwatch ships for its users, run the way a user runs it: in their own test session."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from ._helpers import base_env

USER_TESTS = """
import logging

import meshwatch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Flask


def test_fastapi_request_is_captured(meshwatch_capture):
    app = FastAPI()

    @app.get("/users/{uid}")
    def user(uid: int):
        logging.getLogger("users").info("user fetched", extra={"uid": uid, "api_key": "k-123"})
        return {"uid": uid}

    with TestClient(app) as client:
        assert client.get("/users/3").json() == {"uid": 3}
        assert client.get("/users/4").status_code == 200

    spans = [s for s in meshwatch_capture.spans if s.name == "GET /users/{uid}"]
    assert len(spans) == 2
    span = spans[0]
    assert span.attributes["http.route"] == "/users/{uid}"
    assert span.attributes["http.response.status_code"] == 200

    point = meshwatch_capture.metric("http.server.request.duration", **{"http.route": "/users/{uid}"})
    assert point is not None and point.count == 2
    assert point.attributes["http.request.method"] == "GET"
    trace_ids = {format(s.context.trace_id, "032x") for s in spans}
    assert set(point.exemplar_trace_ids) <= trace_ids and point.exemplar_trace_ids

    records = [r for r in meshwatch_capture.logs if r.log_record.body == "user fetched"]
    assert len(records) == 2
    assert records[0].log_record.attributes["api_key"] == "[REDACTED]"
    assert {r.log_record.trace_id for r in records} == {s.context.trace_id for s in spans}


def test_flask_request_is_captured(meshwatch_capture):
    app = Flask(__name__)  # Flask was imported before meshwatch set up: hand the app over

    @app.get("/ping")
    def ping():
        return {"pong": True}

    meshwatch.instrument_app(app)
    assert app.test_client().get("/ping").status_code == 200
    assert meshwatch_capture.span("GET /ping").attributes["http.route"] == "/ping"
    assert meshwatch_capture.metric("http.server.request.duration", **{"http.route": "/ping"}).count == 1


def test_each_test_starts_empty(meshwatch_capture):
    assert meshwatch_capture.spans == []
    assert meshwatch_capture.logs == []
    assert meshwatch_capture.metric("http.server.request.duration", **{"http.route": "/ping"}) is None
"""


def test_user_fixture_captures_spans_metrics_and_logs(tmp_path: Path) -> None:
    (tmp_path / "test_user_app.py").write_text(textwrap.dedent(USER_TESTS))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_user_app.py")],
        cwd=tmp_path,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout
