"""Process-level behaviour, each in a fresh Python process: init() twice, structlog, fork, exit flush."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from meshwatch.stack.testing import eventually

from ._helpers import base_env, jaeger_trace, process_tags, prom_query


def run_script(code: str, tmp_path: Path, **env: str) -> tuple[list[dict[str, Any]], str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    result = subprocess.run(
        [sys.executable, str(script)], env=base_env(**env), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    return lines, result.stderr


def test_init_twice_adds_no_duplicate_handler(tmp_path: Path) -> None:
    lines, _ = run_script(
        """
        import logging, meshwatch
        from meshwatch._logs import MeshwatchHandler
        meshwatch.init(service_name="twice", traces_exporter="none", metrics_exporter="none", logs_exporter="none")
        meshwatch.init(service_name="twice-again", traces_exporter="none", metrics_exporter="none",
                       logs_exporter="none")
        logging.getLogger("app").info("said once")
        handlers = [h for h in logging.getLogger().handlers if isinstance(h, MeshwatchHandler)]
        print(f'{{"handlers": {len(handlers)}}}')
        """,
        tmp_path,
    )
    said = [x for x in lines if x.get("message") == "said once"]
    assert len(said) == 1
    assert said[0]["service"] == "twice-again"  # the second init's settings apply
    assert [x["handlers"] for x in lines if "handlers" in x] == [1]


def test_structlog_lines_are_json_with_trace_and_redaction(tmp_path: Path) -> None:
    lines, _ = run_script(
        """
        import meshwatch, structlog
        from opentelemetry import trace
        meshwatch.init(service_name="sl", traces_exporter="none", metrics_exporter="none", logs_exporter="none")
        with trace.get_tracer("t").start_as_current_span("work") as span:
            structlog.get_logger("checkout").info("paid", order=7, password="hunter2")
            print('{"span": "%032x"}' % span.get_span_context().trace_id)
        """,
        tmp_path,
    )
    paid = next(x for x in lines if x.get("message") == "paid")
    trace_id = next(x["span"] for x in lines if "span" in x)
    assert paid["logger"] == "checkout"
    assert paid["order"] == 7
    assert paid["password"] == "[REDACTED]"
    assert paid["trace_id"] == trace_id
    assert paid["level"] == "INFO"


def test_excluded_urls_are_not_traced(tmp_path: Path) -> None:
    lines, _ = run_script(
        """
        import json, meshwatch
        from meshwatch.testing import capture
        meshwatch.init(service_name="ex", traces_exporter="none", metrics_exporter="none", logs_exporter="none",
                       excluded_urls="healthz,metrics$")
        from fastapi import FastAPI
        from fastapi.testclient import TestClient
        app = FastAPI()

        @app.get("/healthz")
        def health():
            return {}

        @app.get("/orders")
        def orders():
            return []

        attached = capture()
        captured = next(attached)
        client = TestClient(app)
        client.get("/healthz"), client.get("/orders")
        print(json.dumps({"spans": [s.name for s in captured.spans]}))
        """,
        tmp_path,
    )
    assert next(x["spans"] for x in lines if "spans" in x) == ["GET /orders"]


def test_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    script.write_text("import meshwatch\nmeshwatch.init()\n")
    result = subprocess.run(
        [sys.executable, str(script)],
        env=base_env(OTEL_TRACES_SAMPLER_ARG="lots"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "OTEL_TRACES_SAMPLER_ARG='lots'" in result.stderr


def test_missing_instrumented_library_never_breaks_init(tmp_path: Path) -> None:
    lines, _ = run_script(
        """
        import builtins, meshwatch
        real_import = builtins.__import__
        def refuse(name, *args, **kwargs):
            if name.startswith("opentelemetry.instrumentation.redis"):
                raise ImportError("pretend the redis instrumentor is broken")
            return real_import(name, *args, **kwargs)
        builtins.__import__ = refuse
        status = meshwatch.init(service_name="partial", traces_exporter="none", metrics_exporter="none",
                                logs_exporter="none", disabled_instrumentations="grpc,sqlalchemy")
        import importlib.util, json, requests  # instrumentors are applied when their library is imported
        has_redis = importlib.util.find_spec("redis") is not None
        if has_redis:
            import redis
        from opentelemetry.instrumentation.requests import RequestsInstrumentor
        print(json.dumps({"instrumented": status.instrumented, "skipped": sorted(status.skipped),
                          "requests": RequestsInstrumentor().is_instrumented_by_opentelemetry, "redis": has_redis}))
        """,
        tmp_path,
    )
    report = next(x for x in lines if "instrumented" in x)
    assert report["requests"] is True, "applied at import"
    assert "requests" in report["instrumented"]
    assert {"grpc_client", "grpc_server", "sqlalchemy"} <= set(report["skipped"])
    if report["redis"]:  # imported after init(): the broken instrumentor is a warning, not a failure
        warning = next(x for x in lines if "did not instrument redis" in x.get("message", ""))
        assert "pretend the redis instrumentor is broken" in warning["message"]
    else:
        assert "redis" in report["skipped"]


@pytest.mark.integration
def test_forked_child_reinitialises(jaeger: Any, tmp_path: Path) -> None:
    service = f"fork-{uuid.uuid4().hex[:6]}"
    lines, _ = run_script(
        f"""
        import json, os, meshwatch
        from opentelemetry import trace
        meshwatch.init(service_name="{service}", endpoint="{jaeger.urls["otlp_grpc"]}", metrics_exporter="none",
                       logs_exporter="none", schedule_delay=0.1)
        tracer = trace.get_tracer("forktest")
        with tracer.start_as_current_span("before-fork"):
            pass
        pid = os.fork()
        who = "child" if pid == 0 else "parent"
        with tracer.start_as_current_span(f"in-{{who}}") as span:
            print(json.dumps({{"who": who, "pid": os.getpid(), "trace": "%032x" % span.get_span_context().trace_id}}),
                  flush=True)
        meshwatch.shutdown()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        """,
        tmp_path,
    )
    found = {x["who"]: x for x in lines if "who" in x}
    assert set(found) == {"child", "parent"}, lines
    identities = {}
    for who, info in found.items():
        trace = eventually(lambda t=info["trace"]: jaeger_trace(jaeger, t), timeout=30, what=f"{who}'s span")
        span = trace["spans"][0]
        assert span["operationName"] == f"in-{who}"
        tags = process_tags(trace, span)
        assert tags["service.name"] == service
        assert tags["process.pid"] == info["pid"]  # the child exported with its own identity
        identities[who] = tags["service.instance.id"]
    assert identities["child"] != identities["parent"]


def test_a_worker_forked_during_a_metrics_export_still_exports(prometheus: Any, tmp_path: Path) -> None:
    """gunicorn forks its workers while the master's metric thread may be collecting or exporting.

    Only the forking thread survives a fork, so a lock held by another thread at that moment
    stays held in the child for ever: such a worker used to never export a metric again.
    Here another thread holds the collection lock for a moment and the export lock across
    the fork; the child's counter must still reach Prometheus, with the child's own pid.
    """
    service = f"forkm-{uuid.uuid4().hex[:6]}"
    lines, _ = run_script(
        f"""
        import json, os, threading, time, meshwatch
        from opentelemetry import metrics
        from meshwatch import _setup
        meshwatch.init(service_name="{service}", traces_exporter="none", logs_exporter="none")
        st = _setup._STATE
        collect_lock = st.meter_provider._measurement_consumer._lock
        export_lock = st.periodic_reader._export_lock
        probe = metrics.get_meter("forkprobe").create_counter("fork.probe")
        held = threading.Event()

        def busy_metric_thread():  # as the reader's thread mid-collection, then mid-export
            with collect_lock:
                with export_lock:
                    held.set()
                    time.sleep(0.3)
            with export_lock:
                time.sleep(2)

        threading.Thread(target=busy_metric_thread, daemon=True).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            probe.add(1, {{"who": "child"}})
            print(json.dumps({{"child": os.getpid()}}), flush=True)
            time.sleep(2)
            meshwatch.shutdown()
            os._exit(0)
        os.waitpid(pid, 0)
        meshwatch.shutdown()
        """,
        tmp_path,
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"{prometheus.url}/api/v1/otlp/v1/metrics",
        OTEL_EXPORTER_OTLP_METRICS_PROTOCOL="http/protobuf",
        OTEL_METRIC_EXPORT_INTERVAL="500",
    )
    child = next(x["child"] for x in lines if "child" in x)

    def child_series() -> list[dict[str, Any]]:
        return prom_query(prometheus, f'fork_probe_total{{job="{service}", who="child"}}')

    series = eventually(child_series, timeout=30, what="the forked child's counter in Prometheus")
    assert float(series[0]["value"][1]) == 1
    pids = {r["metric"].get("process_pid") for r in prom_query(prometheus, f'target_info{{job="{service}"}}')}
    assert str(child) in pids, pids


def test_shutdown_flushes_at_exit_within_its_timeout(tmp_path: Path) -> None:
    """A short script exits promptly even with the collector unreachable (bounded flush at exit)."""
    import time

    started = time.monotonic()
    lines, _ = run_script(
        """
        import logging, meshwatch
        from opentelemetry import trace
        meshwatch.init(service_name="exit", endpoint="http://127.0.0.1:9", shutdown_timeout=3)
        with trace.get_tracer("t").start_as_current_span("short job"):
            logging.getLogger("job").info("done")
        """,
        tmp_path,
    )
    assert time.monotonic() - started < 25
    assert [x["message"] for x in lines if x.get("logger") == "job"] == ["done"]
    report = [x for x in lines if x.get("message", "").startswith("meshwatch dropped telemetry")]
    assert report, "the exit flush reports what it could not deliver"


@pytest.mark.integration
def test_traces_over_otlp_http_reach_jaeger(jaeger: Any, tmp_path: Path) -> None:
    service = f"http-{uuid.uuid4().hex[:6]}"
    lines, _ = run_script(
        f"""
        import json, meshwatch
        from opentelemetry import trace
        meshwatch.init(service_name="{service}", protocol="http/protobuf", endpoint="{jaeger.urls["otlp_http"]}",
                       metrics_exporter="none", logs_exporter="none")
        with trace.get_tracer("t").start_as_current_span("over http", attributes={{"order.id": 7}}) as span:
            print(json.dumps({{"trace": "%032x" % span.get_span_context().trace_id}}))
        """,
        tmp_path,
    )
    trace_id = next(x["trace"] for x in lines if "trace" in x)
    trace = eventually(lambda: jaeger_trace(jaeger, trace_id), timeout=30, what="the span sent over OTLP/HTTP")
    assert trace["spans"][0]["operationName"] == "over http"
    assert {"key": "order.id", "type": "int64", "value": 7} in trace["spans"][0]["tags"]
    assert process_tags(trace, trace["spans"][0])["service.name"] == service


def test_b3_and_jaeger_headers_are_extracted_and_injected(tmp_path: Path) -> None:
    lines, _ = run_script(
        """
        import json, meshwatch
        from opentelemetry import propagate, trace
        meshwatch.init(service_name="prop", traces_exporter="none", metrics_exporter="none", logs_exporter="none",
                       propagators=["tracecontext", "b3multi", "jaeger"])
        incoming = {"x-b3-traceid": "463ac35c9f6413ad48485a3953bb6124", "x-b3-spanid": "a2fb4a1d1a96d312",
                    "x-b3-sampled": "1"}  # as servers hand headers over: lower case
        context = propagate.extract(incoming)
        with trace.get_tracer("t").start_as_current_span("handler", context=context) as span:
            outgoing = {}
            propagate.inject(outgoing)
            print(json.dumps({"trace": "%032x" % span.get_span_context().trace_id,
                              "parent": "%016x" % span.parent.span_id, "headers": sorted(outgoing)}))
        """,
        tmp_path,
    )
    out = next(x for x in lines if "trace" in x)
    assert out["trace"] == "463ac35c9f6413ad48485a3953bb6124"
    assert out["parent"] == "a2fb4a1d1a96d312"
    assert {"traceparent", "x-b3-traceid", "uber-trace-id"} <= {h.lower() for h in out["headers"]}


def test_unsampled_requests_still_count_in_red_metrics(tmp_path: Path) -> None:
    lines, _ = run_script(
        """
        import json
        from meshwatch.testing import capture
        attached = capture()  # initialises meshwatch, exporting nowhere, sampling from the environment
        captured = next(attached)
        from fastapi import FastAPI
        from fastapi.testclient import TestClient
        app = FastAPI()

        @app.get("/orders/{oid}")
        def order(oid: int):
            return {}

        client = TestClient(app)
        for i in range(20):
            client.get(f"/orders/{i}")
        point = captured.metric("http.server.request.duration", **{"http.route": "/orders/{oid}"})
        print(json.dumps({"spans": len(captured.spans), "count": point.count if point else 0,
                          "exemplars": len(point.exemplar_trace_ids) if point else -1}))
        """,
        tmp_path,
        OTEL_TRACES_SAMPLER_ARG="0",
    )
    out = next(x for x in lines if "spans" in x)
    assert out == {"spans": 0, "count": 20, "exemplars": 0}  # nothing exported, every request counted


def test_a_stop_signal_handler_the_program_set_is_left_alone(tmp_path: Path) -> None:
    """meshwatch takes SIGTERM only where it is still at its default; the program's own handler and SIG_IGN stay."""
    lines, _ = run_script(
        """
        import json, signal, meshwatch
        def mine(signum, frame): pass
        signal.signal(signal.SIGTERM, mine)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        meshwatch.init(service_name="signals", traces_exporter="none", metrics_exporter="none", logs_exporter="none")
        print(json.dumps({"term_kept": signal.getsignal(signal.SIGTERM) is mine,
                          "hup_kept": signal.getsignal(signal.SIGHUP) is signal.SIG_IGN}))
        """,
        tmp_path,
    )
    assert {"term_kept": True, "hup_kept": True} in lines


def test_init_imports_no_instrumented_library_the_service_does_not_import(tmp_path: Path) -> None:
    """Instrumentors wait for their library's first import (init() imported all of them: ~1 s of CPU)."""
    lines, _ = run_script(
        """
        import json, sys, meshwatch
        status = meshwatch.init(service_name="lazy", traces_exporter="none", metrics_exporter="none",
                                logs_exporter="none")
        libraries = ["fastapi", "flask", "django", "sqlalchemy", "celery", "httpx", "pika", "redis"]
        loaded = [m for m in libraries if m in sys.modules]
        import flask
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        print(json.dumps({"loaded": loaded, "instrumented": status.instrumented,
                          "flask": FlaskInstrumentor().is_instrumented_by_opentelemetry,
                          "patched": getattr(flask.Flask.wsgi_app, "_meshwatch", False)}))
        """,
        tmp_path,
    )
    report = next(x for x in lines if "loaded" in x)
    assert report["loaded"] == [], f"init() imported {report['loaded']}"
    assert "flask (meshwatch)" in report["instrumented"] and "celery" in report["instrumented"]
    assert report["flask"] is False, "meshwatch's WSGI span, not the contrib instrumentor (_wsgi.py)"
    assert report["patched"] is True, "applied when the service imported Flask: the importing code got it"
