"""A Celery worker (prefork pool, Redis broker) and a producer, both under ``meshwatch-run``, no OTel code.

The task's span must join the producer's trace, a failing task must be an error
span, task duration and failures must be metrics, a line logged in the task must
be exported and printed as JSON with the task's trace id (Celery's own logging
set-up removes other handlers), and an idle worker must not export the broker client's polling as one-span traces.
Everything is counted at an OTLP sink (Jaeger would merge identical spans).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshwatch.collector.otlp_sink import OtlpSink, otlp_sink, sink_env
from meshwatch.stack.testing import eventually

from ._helpers import APPS, base_env

pytestmark = pytest.mark.integration

pytest.importorskip("celery")
pytest.importorskip("opentelemetry.instrumentation.celery")

SPAN_KIND_CLIENT = 3


@contextlib.contextmanager
def _worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["meshwatch-run", "celery", "-A", "tasks", "worker", "--pool", "prefork", "-c", "2", "-l", "INFO"],
            cwd=APPS,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        eventually(
            lambda: process.poll() is None and " ready." in log.read_text(errors="replace"),
            timeout=60,
            what=f"the celery worker to be ready:\n{log.read_text(errors='replace')[-2000:]}",
        )
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _env(sink: OtlpSink, redis_url: str, service: str, **extra: str) -> dict[str, str]:
    return base_env(
        **sink_env(sink, OTEL_SERVICE_NAME=service, OTEL_BSP_SCHEDULE_DELAY="200", BROKER_URL=redis_url, **extra)
    )


def _produce(sink: OtlpSink, redis_url: str, service: str) -> str:
    """Run the producer under meshwatch-run (it sends both tasks inside a span); its trace id."""
    produced = subprocess.run(
        ["meshwatch-run", "python", "celery_producer.py"],
        cwd=APPS,
        env=_env(sink, redis_url, service),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return next(json.loads(x)["trace_id"] for x in produced.stdout.splitlines() if '"trace_id": "' in x)


def _polling_spans(sink: OtlpSink, service: str) -> list[Any]:
    with sink.lock:
        return [
            s
            for s in sink.spans
            if s.resource.get("service.name") == service and s.kind == SPAN_KIND_CLIENT and not s.parent_id
        ]


def test_task_joins_the_producers_trace_and_its_log_is_exported(redis_server: Any, tmp_path: Path) -> None:
    redis_url = redis_server.urls["redis"]
    with otlp_sink() as sink, _worker(_env(sink, redis_url, "celery-worker"), tmp_path / "worker.log"):
        time.sleep(5)  # idle: kombu polls Redis about once a second
        idle_polling = len(_polling_spans(sink, "celery-worker"))

        trace_id = _produce(sink, redis_url, "celery-producer")

        def task_spans() -> dict[str, Any]:
            with sink.lock:
                return {s.name: s for s in sink.spans if s.trace_id == trace_id}

        spans = eventually(
            lambda: (found := task_spans()) and {"run/tasks.add", "run/tasks.fail"} <= set(found) and found,
            timeout=20,
            what="both task spans in the producer's trace",
        )
        # parent-linked: each task's span is a child of the producer's publish span of that task
        assert spans["run/tasks.add"].parent_id == spans["apply_async/tasks.add"].span_id
        assert spans["apply_async/tasks.add"].parent_id == spans["enqueue"].span_id
        assert spans["run/tasks.add"].resource["service.name"] == "celery-worker"
        assert not spans["run/tasks.add"].error
        assert spans["run/tasks.fail"].error, "a task that raised is an error span"

        def task_log() -> list[Any]:
            with sink.lock:
                return [r for r in sink.logs if r.body == "adding"]

        def task_metrics() -> dict[tuple[str, str, str], float]:
            with sink.lock:
                points = [p for p in sink.points if p.resource.get("service.name") == "celery-worker"]
            seen: dict[tuple[str, str, str], float] = {}
            for p in points:  # cumulative: the last point of a series is its total
                if p.metric == "celery.task.duration":
                    seen[(p.metric, p.attributes["celery.task.name"], p.attributes["celery.task.state"])] = p.count
                elif p.metric == "celery.task.failures":
                    seen[(p.metric, p.attributes["celery.task.name"], p.attributes["error.type"])] = p.value
            return seen

        wanted = {
            ("celery.task.duration", "tasks.add", "SUCCESS"): 1,
            ("celery.task.duration", "tasks.fail", "FAILURE"): 1,
            ("celery.task.failures", "tasks.fail", "ValueError"): 1,
        }
        metrics = eventually(
            lambda: (found := task_metrics()) and all(k in found for k in wanted) and found,
            timeout=20,
            what="task duration and failure metrics at the sink",
        )
        assert {k: metrics[k] for k in wanted} == wanted, metrics
        assert ("celery.task.failures", "tasks.add", "ValueError") not in metrics

        exported = eventually(task_log, timeout=20, what="the task's log record at the sink")
        assert exported[0].trace_id == trace_id
        assert exported[0].attributes.get("x") == 2
        printed = [
            json.loads(line)
            for line in (tmp_path / "worker.log").read_text(errors="replace").splitlines()
            if line.startswith("{") and '"adding"' in line
        ]
        assert printed and printed[0]["trace_id"] == trace_id, "printed as a JSON line with the task's trace id"

    assert idle_polling == 0, f"an idle worker exported {idle_polling} broker-polling spans"


def test_broker_polling_spans_when_asked_for(redis_server: Any, tmp_path: Path) -> None:
    """The positive control of the idle check above: the same worker, polling traced, does show them."""
    env_extra = {"MESHWATCH_BROKER_POLLING_SPANS": "true"}
    with (
        otlp_sink() as sink,
        _worker(_env(sink, redis_server.urls["redis"], "celery-polling", **env_extra), tmp_path / "w.log"),
    ):
        eventually(lambda: len(_polling_spans(sink, "celery-polling")) >= 3, timeout=20, what="polling spans")


def test_worker_sigterm_loses_no_finished_task_span(redis_server: Any, tmp_path: Path) -> None:
    """A warm shutdown (SIGTERM to the worker) right after tasks ran: only the flush on the way out exports them.

    The batch delay is a minute so that nothing leaves on its timer while Celery shuts down.
    """
    redis_url = redis_server.urls["redis"]
    with otlp_sink() as sink:
        env = base_env(
            **sink_env(sink, OTEL_SERVICE_NAME="celery-stop", BROKER_URL=redis_url, OTEL_BSP_SCHEDULE_DELAY="60000")
        )
        with _worker(env, tmp_path / "worker.log") as worker:
            trace_id = _produce(sink, redis_url, "celery-stop-producer")
            eventually(
                lambda: "adding" in (tmp_path / "worker.log").read_text(errors="replace"), timeout=20, what="task ran"
            )
            time.sleep(0.5)
            worker.send_signal(signal.SIGTERM)  # to the worker's main process, as an orchestrator does
            code = worker.wait(30)
        with sink.lock:
            names = {s.name for s in sink.spans if s.trace_id == trace_id}
            logs = [r for r in sink.logs if r.body == "adding"]
        assert {"run/tasks.add", "run/tasks.fail"} <= names, (names, (tmp_path / "worker.log").read_text()[-2000:])
        assert logs and logs[0].trace_id == trace_id
        assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM), code
