"""The servers' own log lines are JSON on stdout and shipped over OTLP, like the application's.

uvicorn and gunicorn set up their own loggers after meshwatch (and they do not
propagate to the root logger), so their start-up lines, access log and
"Exception in ASGI application" used to stay in the server's plain-text format
and never reached the collector. The crash is then found in the real Elasticsearch
by its exception type, through the collector.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from meshwatch.collector.otlp_sink import otlp_sink, sink_env
from meshwatch.collector.testing import start_collector
from meshwatch.stack import free_port
from meshwatch.stack.testing import eventually

from ._helpers import base_env, running, start

pytestmark = pytest.mark.integration


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _printed(log: Path) -> tuple[list[dict], list[str]]:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    objects, plain = [], []
    for line in lines:
        try:
            objects.append(json.loads(line))
        except ValueError:
            plain.append(line)
    return objects, plain


def test_uvicorn_lines_access_log_and_crash_are_json_and_exported(tmp_path: Path) -> None:
    port = free_port()
    with otlp_sink() as sink:
        env = base_env(**sink_env(sink, OTEL_SERVICE_NAME="server-logs-uvicorn", OTEL_BSP_SCHEDULE_DELAY="200"))
        service = start(
            "uvicorn",
            ["meshwatch-run", "uvicorn", "pricing:app", "--port", str(port)],
            env,
            tmp_path,
            port=port,
            ready_path="/price/1",
        )
        with running(service):
            assert _get(f"{service.url}/price/7") == 200
            assert _get(f"{service.url}/boom") == 500

            def exported() -> bool:
                with sink.lock:
                    bodies = [str(r.body) for r in sink.logs]
                return any("GET /price/7" in b for b in bodies) and any("Exception in ASGI" in b for b in bodies)

            eventually(exported, timeout=20, what="uvicorn's access line and crash at the sink")
        objects, plain = _printed(service.log)
    assert not plain, f"lines that are not JSON: {plain[:5]}"
    by_message = {o["message"]: o for o in objects}
    assert any(m.startswith("Started server process") for m in by_message), "uvicorn's start-up line as JSON"
    access = next(o for o in objects if o["logger"] == "uvicorn.access" and "GET /price/7" in o["message"])
    assert access["trace_id"], "the access line carries the request's trace id"
    crash = next(o for o in objects if o["message"].startswith("Exception in ASGI application"))
    assert crash["exception"]["type"] == "RuntimeError" and "pricing exploded" in crash["exception"]["message"]
    with sink.lock:
        shipped = [r for r in sink.logs if str(r.body).startswith("Exception in ASGI application")]
        spans = {s.trace_id for s in sink.spans if s.attributes.get("url.path") == "/price/7"}
    assert shipped and shipped[0].attributes.get("exception.type") == "RuntimeError"
    assert access["trace_id"] in spans


def _get_with_trace(url: str, trace_id: str) -> int:
    request = urllib.request.Request(url, headers={"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("fast_path", ["true", "false"])
def test_uvicorn_crash_record_carries_the_trace_id_of_its_request(tmp_path: Path, fast_path: str) -> None:
    """uvicorn logs the crash after the request's span has ended: the record still has its trace id.

    Also through the SDK's own log handler (the fence's fallback, ``MESHWATCH_SDK_FAST_PATH=false``).
    """
    port = free_port()
    trace_id = uuid.uuid4().hex
    with otlp_sink() as sink:
        settings = sink_env(
            sink,
            OTEL_SERVICE_NAME="server-logs-crash-trace",
            OTEL_BSP_SCHEDULE_DELAY="200",
            MESHWATCH_SDK_FAST_PATH=fast_path,
        )
        env = base_env(**settings)
        argv = ["meshwatch-run", "uvicorn", "pricing:app", "--port", str(port)]
        service = start("uvicorn", argv, env, tmp_path, port=port, ready_path="/price/1")
        with running(service):
            assert _get_with_trace(f"{service.url}/boom", trace_id) == 500

            def crash_and_span() -> bool:
                with sink.lock:
                    crashed = any(str(r.body).startswith("Exception in ASGI application") for r in sink.logs)
                    return crashed and any(s.attributes.get("url.path") == "/boom" for s in sink.spans)

            eventually(crash_and_span, timeout=20, what="uvicorn's crash record and the /boom span at the sink")
        objects, _ = _printed(service.log)
    with sink.lock:
        [shipped] = [r for r in sink.logs if str(r.body).startswith("Exception in ASGI application")]
        [span] = [s for s in sink.spans if s.attributes.get("url.path") == "/boom"]
    assert span.trace_id == trace_id, "the server span continues the caller's trace"
    assert shipped.trace_id == trace_id, f"the exported crash record has trace id {shipped.trace_id!r}"
    assert shipped.attributes.get("exception.type") == "RuntimeError"
    [printed] = [o for o in objects if o["message"].startswith("Exception in ASGI application")]
    assert printed["trace_id"] == trace_id and printed["span_id"] == span.span_id, "the JSON line names the span"


def test_gunicorn_lines_are_json_and_exported(tmp_path: Path) -> None:
    port = free_port()
    with otlp_sink() as sink:
        env = base_env(**sink_env(sink, OTEL_SERVICE_NAME="server-logs-gunicorn", OTEL_BSP_SCHEDULE_DELAY="200"))
        argv = ["meshwatch-run", "gunicorn", "-b", f"127.0.0.1:{port}", "--access-logfile", "-", "inventory:app"]
        service = start("gunicorn", argv, env, tmp_path, port=port, ready_path="/stock/1")
        with running(service):
            assert _get(f"{service.url}/stock/5") == 200

            def exported() -> bool:
                with sink.lock:
                    bodies = [str(r.body) for r in sink.logs]
                return any("Booting worker" in b for b in bodies) and any("/stock/5" in b for b in bodies)

            eventually(exported, timeout=20, what="gunicorn's boot line and access line at the sink")
        objects, plain = _printed(service.log)
    assert not plain, f"lines that are not JSON: {plain[:5]}"
    assert any(o["logger"] == "gunicorn.error" and o["message"].startswith("Booting worker") for o in objects)
    assert any(o["logger"] == "gunicorn.access" and "/stock/5" in o["message"] for o in objects)


def test_an_unhandled_exception_under_uvicorn_is_found_in_elasticsearch_by_its_type(
    tmp_path: Path, elasticsearch: Any
) -> None:
    """Service → meshwatch collector → the real Elasticsearch: a term query on error.type finds the crash."""
    from elasticsearch import Elasticsearch

    prefix = f"mwcrash-{uuid.uuid4().hex[:8]}"
    collector = start_collector(
        {
            "exporters": {
                "elasticsearch": {
                    "endpoints": [elasticsearch.url],
                    "index_prefix": prefix,
                    "sending_queue": {"fsync": "never"},
                }
            },
            "service": {"pipelines": {"logs": {"receivers": ["otlp"], "exporters": ["elasticsearch"]}}},
        },
        tmp_path / "collector",
    )
    client = Elasticsearch(elasticsearch.url, request_timeout=30)
    port = free_port()
    service_name = f"crash-{uuid.uuid4().hex[:6]}"
    try:
        env = base_env(
            OTEL_SERVICE_NAME=service_name,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{collector.grpc_endpoint}",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_TRACES_EXPORTER="none",
            OTEL_METRICS_EXPORTER="none",
            OTEL_BSP_SCHEDULE_DELAY="200",
        )
        argv = ["meshwatch-run", "uvicorn", "pricing:app", "--port", str(port)]
        service = start("uvicorn-crash", argv, env, tmp_path, port=port, ready_path="/price/1")
        with running(service):
            assert _get(f"{service.url}/boom") == 500

            def crashes() -> list[dict[str, Any]]:
                client.indices.refresh(index=f"{prefix}-*", ignore_unavailable=True, allow_no_indices=True)
                query = {
                    "bool": {
                        "filter": [
                            {"term": {"error.type": "RuntimeError"}},
                            {"term": {"service.name": service_name}},
                        ]
                    }
                }
                found = client.search(index=f"{prefix}-*", query=query, size=5, allow_no_indices=True)
                return [hit["_source"] for hit in found["hits"]["hits"]]

            hits = eventually(crashes, timeout=60, what="the crash searchable by error.type in Elasticsearch")
        crash = hits[0]
        assert crash["message"].startswith("Exception in ASGI application")
        assert "pricing exploded" in crash["error"]["message"]
        assert "raise RuntimeError" in crash["error"]["stack_trace"]
        assert crash["log"]["level"] == "error"
        # positive control of the query: another type finds nothing
        client.indices.refresh(index=f"{prefix}-*", ignore_unavailable=True, allow_no_indices=True)
        other = client.count(index=f"{prefix}-*", query={"term": {"error.type": "KeyError"}}, allow_no_indices=True)
        assert other["count"] == 0
    finally:
        collector.stop(timeout=20)
        client.indices.delete(index=f"{prefix}-*", allow_no_indices=True)
        client.options(ignore_status=404).indices.delete_index_template(name=prefix)
        client.close()
