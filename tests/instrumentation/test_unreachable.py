"""Collector unreachable: the service answers as fast as ever, stays healthy, and counts what it drops."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meshwatch.stack import free_port
from meshwatch.stack.testing import eventually

from ._helpers import base_env, closed_port_url, get_json, start

pytestmark = pytest.mark.integration


def _dropped(metrics_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("meshwatch_sdk_dropped_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels] = out.get(labels, 0.0) + float(value)
    return out


def test_nothing_blocks_or_breaks_when_the_collector_is_down(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    env = base_env(
        OTEL_SERVICE_NAME="plain-unreachable",
        OTEL_EXPORTER_OTLP_ENDPOINT=closed_port_url(),  # traces, metrics and logs: nobody listens
        OTEL_METRICS_EXPORTER="otlp,prometheus",  # the pull endpoint shows the drop counter
        OTEL_EXPORTER_PROMETHEUS_PORT=str(metrics_port),
        OTEL_BSP_MAX_QUEUE_SIZE="64",  # small, so the queue overflows within the test
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_EXPORTER_OTLP_TIMEOUT="2000",
        OTEL_METRIC_EXPORT_INTERVAL="1000",
        MESHWATCH_DROP_REPORT_INTERVAL="1",
        MESHWATCH_SHUTDOWN_TIMEOUT="3",
    )
    service = start(
        "plain",
        ["meshwatch-run", "uvicorn", "plain:app", "--port", str(port)],
        env,
        tmp_path,
        port=port,
        ready_path="/hello/ready",
    )
    try:
        latencies: list[float] = []

        def call(i: int) -> None:
            started = time.monotonic()
            assert get_json(f"{service.url}/hello/v{i}") == {"hello": f"v{i}"}
            latencies.append(time.monotonic() - started)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(call, range(600)))
        latencies.sort()
        # never waiting on the collector: even the slowest request is far below the 2 s export timeout
        assert latencies[len(latencies) // 2] < 0.25, f"median {latencies[len(latencies) // 2]:.3f}s"
        assert latencies[-1] < 1.5, f"slowest {latencies[-1]:.3f}s"
        assert service.alive()

        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        first = eventually(
            lambda: (d := _dropped(metrics_url)) and any("traces" in k for k in d) and d,
            timeout=30,
            what="meshwatch_sdk_dropped_total for traces",
        )
        assert any('reason="queue_full"' in k or 'reason="export_failed"' in k for k in first)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(call, range(600, 900)))
        eventually(
            lambda: (
                sum(v for k, v in _dropped(metrics_url).items() if 'signal="traces"' in k)
                > sum(v for k, v in first.items() if 'signal="traces"' in k)
            ),
            timeout=30,
            what="the traces drop counter to grow",
        )
        # reported in a log line once in a while, not per item
        reports = eventually(
            lambda: [ln for ln in service.lines() if ln.get("message", "").startswith("meshwatch dropped telemetry")],
            timeout=30,
            what="a 'meshwatch dropped telemetry' report line",
        )
        assert len(reports) < 60, f"{len(reports)} report lines: should be at most about one per second"
        assert all(line["level"] == "WARNING" for line in reports)
        # every visitor got a JSON line, none was lost to the outage
        said_hello = [ln for ln in service.lines() if ln.get("message") == "said hello"]
        assert len(said_hello) >= 900
    finally:
        started = time.monotonic()
        code = service.stop(timeout=30)
        stopped_in = time.monotonic() - started
    assert code in (0, -15), service.log.read_text()[-2000:]  # uvicorn re-raises SIGTERM after a clean stop
    assert stopped_in < 15, f"shutdown took {stopped_in:.1f}s with the collector down"
    final = [json.loads(x) for x in service.log.read_text().splitlines() if x.startswith("{")]
    assert not [ln for ln in final if ln.get("level") == "ERROR"], "no errors, only counted drops"
