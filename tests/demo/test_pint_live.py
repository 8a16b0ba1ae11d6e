"""pint's online checks against the running demo: every series a rule reads exists, ``rate()`` gets counters.

The demo (tests/demo/conftest.py) runs under load with the collector's self-telemetry
scraped, so the suite's Prometheus holds what production would. pint (v0.87.0) queries it
for each rule (``promql/series``, ``promql/rate``, ``promql/range_query``, ...). Exceptions
live in ``alerts/pint.hcl`` with why; a misspelt metric must be reported (positive control).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from meshwatch.demo.platform import Platform
from meshwatch.stack import Server, binary
from meshwatch.stack.testing import eventually

from .conftest import get_json, promql

pytestmark = pytest.mark.e2e

ALERTS = Path(__file__).resolve().parents[2] / "alerts"
PLANTED = """\
groups:
  - name: planted
    rules:
      - alert: PlantedMisspeltMetric
        expr: sum by (job) (rate(http_server_request_duraton_seconds_count[5m])) < 1
        for: 1m
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.job }} gets no requests"
"""


def _has_history(prometheus: Server) -> bool:
    end = time.time() // 300 * 300  # pint's steps fall on 5-minute boundaries
    found = get_json(
        f"{prometheus.url}/api/v1/query_range",
        query="count(traces_span_metrics_calls_total)",
        start=str(end - 7200),
        end=str(end),
        step="300",
    )
    return bool(found["data"]["result"])


def _lint(prometheus: Server, tmp_path: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "pint.hcl"
    config.write_text(
        (ALERTS / "pint.hcl").read_text()
        + f'\nprometheus "suite" {{\n  uri     = "{prometheus.url}"\n  timeout = "30s"\n}}\n'
    )
    command = [str(binary("pint")), "--no-color", "--config", str(config), "lint", "--fail-on", "warning"]
    return subprocess.run([*command, *map(str, files)], capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_every_series_the_rules_read_exists_on_the_demo(platform: Platform, prometheus: Server, tmp_path: Path) -> None:
    # The demo's services and the collector have been scraped (the SLO recording rules need both).
    for query in (
        'count(up{job="meshwatch-collector"} == 1)',
        "count(http_server_request_duration_seconds_count)",
        "count(traces_span_metrics_calls_total)",
    ):
        eventually(lambda query=query: promql(prometheus, query), timeout=180, what=query)
    # pint looks for a metric's history with a range query at a 5-minute step: until a step
    # lands on the demo's data (up to 5 minutes on a fresh demo) it reports every metric missing.
    eventually(lambda: _has_history(prometheus), timeout=420, what="a 5-minute step of history")
    done = _lint(prometheus, tmp_path, *sorted((ALERTS / "rules").glob("*.yml")))
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]


def test_a_misspelt_metric_is_reported_online(platform: Platform, prometheus: Server, tmp_path: Path) -> None:
    planted = tmp_path / "planted.rules.yml"
    planted.write_text(PLANTED)
    done = _lint(prometheus, tmp_path, planted)
    assert done.returncode != 0
    assert "http_server_request_duraton_seconds_count" in done.stdout + done.stderr
    assert "promql/series" in done.stdout + done.stderr
