"""Zero code under ``uvicorn --reload``: after the code changes and the server reloads, it is still traced.

A developer's loop: ``meshwatch-run uvicorn app:app --reload``, edit, save. The reloaded
worker is a new process; its spans must still reach Jaeger, joined to the caller's trace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import textwrap
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from meshwatch.stack import free_port, wait_http
from meshwatch.stack.testing import eventually

from ._helpers import base_env, jaeger_trace, process_tags

pytestmark = pytest.mark.integration

APP = """
from fastapi import FastAPI

app = FastAPI()


@app.get("/version")
def version() -> dict:
    return {{"version": {version}}}
"""


def _call(url: str, trace_id: str) -> dict[str, Any]:
    """GET with a W3C parent, so the server span lands in a trace the test knows."""
    request = urllib.request.Request(url, headers={"traceparent": f"00-{trace_id}-{'ab' * 8}-01"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_reloaded_worker_is_still_traced(jaeger: Any, tmp_path: Path) -> None:
    app = tmp_path / "reloadme.py"
    app.write_text(textwrap.dedent(APP.format(version=1)))
    port = free_port()
    service = f"reload-{uuid.uuid4().hex[:6]}"
    env = base_env(
        OTEL_SERVICE_NAME=service,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=jaeger.urls["otlp_grpc"],
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["meshwatch-run", "uvicorn", "reloadme:app", "--reload", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/version"
    try:
        wait_http(url, timeout=90, is_alive=lambda: server.poll() is None, what="uvicorn --reload")
        before, after = uuid.uuid4().hex, uuid.uuid4().hex
        assert _call(url, before) == {"version": 1}

        app.write_text(textwrap.dedent(APP.format(version=2)))
        eventually(lambda: _call(url, uuid.uuid4().hex) == {"version": 2}, timeout=60, what="the reload")
        assert _call(url, after) == {"version": 2}

        for trace_id in (before, after):
            trace = eventually(lambda t=trace_id: jaeger_trace(jaeger, t), timeout=30, what=f"trace {trace_id}")
            server_spans = [s for s in trace["spans"] if s["operationName"] == "GET /version"]
            assert server_spans, f"no server span in {[s['operationName'] for s in trace['spans']]}"
            assert process_tags(trace, server_spans[0])["service.name"] == service
        pids = {
            process_tags(jaeger_trace(jaeger, t), jaeger_trace(jaeger, t)["spans"][0]).get("process.pid")
            for t in (before, after)
        }
        assert len(pids) == 2, f"both requests were served by one process ({pids}): no reload happened"
    finally:
        if server.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)
