"""``promtool check metrics`` (Prometheus' own linter) accepts every exposition meshwatch serves.

Three endpoints: the collector's self-metrics, its ``prometheus`` exporter carrying span-derived
RED and service-graph series plus an application's own metrics (units ``h``, ``By``, ``1``, an
up-down counter), and the SDK's pull endpoint (``OTEL_METRICS_EXPORTER=otlp,prometheus``) of a
process that made the same metrics. A planted exposition with the mistakes promtool knows (a
counter without ``_total``, no help) must be refused, so the check can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from meshwatch.stack import binary, free_port

# promtool is a backend binary (meshwatch-stack install prometheus): not for `make unit`
pytestmark = pytest.mark.integration


def base_env(**extra: str) -> dict[str, str]:
    """This environment without OTEL_/MESHWATCH_ settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHWATCH_"))}
    env.update(extra, PYTHONUNBUFFERED="1")
    return env


APP = textwrap.dedent(
    """
    import time
    import meshwatch
    from opentelemetry import metrics, trace

    meshwatch.init(service_name="promtool-check")
    tracer = trace.get_tracer("promtool-check")
    meter = metrics.get_meter("promtool-check")
    uptime = meter.create_counter("app.uptime", unit="s", description="seconds up")
    queue = meter.create_up_down_counter("app.queue.depth", unit="{item}", description="queued items")
    size = meter.create_histogram("app.payload.size", unit="By", description="payload sizes")
    meter.create_observable_gauge(
        "app.cache.hit", callbacks=[lambda _: [metrics.Observation(0.75)]], unit="1", description="hit ratio"
    )
    for i in range(20):
        with tracer.start_as_current_span("GET /items", kind=trace.SpanKind.SERVER) as span:
            span.set_attribute("http.request.method", "GET")
            span.set_attribute("http.route", "/items")
            with tracer.start_as_current_span("SELECT", kind=trace.SpanKind.CLIENT) as db:
                db.set_attribute("db.system", "postgresql")
        uptime.add(1)
        queue.add(1 if i % 3 else -1)
        size.record(100 + i)
    print("ready", flush=True)
    time.sleep(120)
    """
)


#: promtool findings accepted on purpose, each with why. Everything else fails the test.
ACCEPTED = {
    'process_thread_count non-histogram and non-summary metrics should not have "_count" suffix': (
        "OpenTelemetry's semantic conventions name it process.thread.count; translated as the "
        "OpenTelemetry Collector does, so dashboards written for either agree"
    ),
}


def _findings(text: bytes) -> list[str]:
    """promtool's lint findings for an exposition, without the accepted ones."""
    done = _promtool(text)
    found = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 0 or found, f"promtool failed without saying why (exit {done.returncode})"
    return [line for line in found if line not in ACCEPTED]


def _promtool(text: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("prometheus", "promtool")), "check", "metrics"],
        input=text.decode(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _scrape(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _eventually_contains(url: str, needles: tuple[str, ...], timeout: float = 45) -> bytes:
    deadline = time.monotonic() + timeout
    text = b""
    while time.monotonic() < deadline:
        try:
            text = _scrape(url)
        except OSError:
            text = b""
        if all(n.encode() in text for n in needles):
            return text
        time.sleep(0.5)
    missing = [n for n in needles if n.encode() not in text]
    raise AssertionError(f"{url} never showed {missing}; last scrape:\n{text.decode()[:3000]}")


def test_promtool_rejects_a_planted_bad_exposition() -> None:
    """Positive control: promtool's lint does fail on the mistakes it exists to find."""
    done = _promtool(b"# TYPE requests counter\nrequests 3\n")
    assert done.returncode != 0
    assert "_total" in done.stdout + done.stderr and "help" in (done.stdout + done.stderr).lower()
    assert _findings(b"# HELP jobs_count Jobs\n# TYPE jobs_count gauge\njobs_count 1\n"), "only one name is accepted"


def test_every_exposition_passes_promtool(collector_factory: Any, tmp_path: Path) -> None:
    exporter_port = free_port()
    collector = collector_factory(
        {
            "connectors": {"spanmetrics": {}, "servicegraph": {}},
            "exporters": {"prometheus": {"endpoint": f"127.0.0.1:{exporter_port}"}},
            "service": {
                "pipelines": {
                    "traces": {"receivers": ["otlp"], "exporters": ["spanmetrics", "servicegraph"]},
                    "metrics": {"receivers": ["otlp", "spanmetrics", "servicegraph"], "exporters": ["prometheus"]},
                }
            },
        }
    )
    pull_port = free_port()
    env = base_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.http_url,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_METRICS_EXPORTER="otlp,prometheus",
        OTEL_EXPORTER_PROMETHEUS_PORT=str(pull_port),
        OTEL_METRIC_EXPORT_INTERVAL="500",
        OTEL_LOGS_EXPORTER="none",
    )
    app = tmp_path / "app.py"
    app.write_text(APP)
    process = subprocess.Popen([sys.executable, str(app)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert process.stdout is not None
        printed = []
        while not printed or not printed[-1].startswith("ready"):
            line = process.stdout.readline().decode()
            assert line, "the app exited before it was ready:\n" + "".join(printed)
            printed.append(line)
        expositions = {
            "SDK pull endpoint": _eventually_contains(
                f"http://127.0.0.1:{pull_port}/metrics",
                ("app_uptime_seconds_total", "app_cache_hit_ratio", "app_payload_size_bytes_bucket"),
            ),
            "collector prometheus exporter": _eventually_contains(
                f"http://127.0.0.1:{exporter_port}/metrics",
                ("app_uptime_seconds_total", "app_queue_depth", "traces_span_metrics_calls_total", "target_info"),
            ),
            "collector self-metrics": _scrape(collector.metrics_url),
        }
    finally:
        process.kill()
        process.wait(10)
    failures = {name: found for name, text in expositions.items() if (found := _findings(text))}
    assert not failures, failures


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
