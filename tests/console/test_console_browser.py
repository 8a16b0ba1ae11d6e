"""In a real browser: headless Chromium (Debian's package) loads the console over the real backends.

``chromium --dump-dom`` after a virtual-time budget gives the page as the browser built it: the
dashboard panels fed by this test's series hold a uPlot canvas, the others say "No data"; the
trace view draws the waterfall of an OTLP trace; a log search finds the error record and links its
trace; the alerts tab shows the firing rule with its runbook. ``--screenshot`` writes the picture
of the page (to a temporary folder; ``MESHWATCH_CONSOLE_SCREENSHOT=docs/img/console-dashboards.png``
writes the one the docs show).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from .conftest import SERVICE

pytestmark = pytest.mark.integration


def _chromium() -> str:
    """Debian's Chromium, installed by ``make backends`` (``meshwatch-stack install chromium``)."""
    from meshwatch.stack.installer import BackendMissing, binary

    try:
        return str(binary("chromium"))
    except BackendMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def _browser(url: str, *extra: str, budget_ms: int = 15000) -> str:
    with tempfile.TemporaryDirectory(prefix="meshwatch-chromium-") as profile:
        command = [
            _chromium(),
            "--headless",
            "--no-sandbox",  # tests may run as root
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1600,1300",
            f"--virtual-time-budget={budget_ms}",
            *(extra or ["--dump-dom"]),
            url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    if os.environ.get("MESHWATCH_CONSOLE_DOM"):  # to look at what the browser built
        Path(os.environ["MESHWATCH_CONSOLE_DOM"]).write_text(done.stdout)
    return done.stdout


def _panels(dom: str) -> dict[str, tuple[str, bool]]:
    """Panel title → (state the page gave it, whether it holds a chart canvas)."""
    out = {}
    for match in re.finditer(
        r'<div class="panel" data-panel-id="\d+"[^>]*data-state="(\w+)">(.*?)<div class="meta">', dom, re.S
    ):
        title = re.search(r"<h4[^>]*>(.*?)</h4>", match[2], re.S)[1]
        out[title.replace("&amp;", "&")] = (match[1], "<canvas" in match[2])
    return out


def test_dashboard_panels_draw_in_chromium(console: Any, scraped: None, tmp_path: Path) -> None:
    url = f"{console.url}/#dashboards/service-overview?range=5m"
    dom = _browser(url)
    assert 'data-ready="true"' in dom, dom[-3000:]
    panels = _panels(dom)
    assert len(panels) == 10, panels  # every panel of the JSON, rows aside
    # All services: this test's series (and any other test's) draw; the demo-only panels say so.
    assert panels["Request rate"] == ("data", True), panels
    assert panels["Latency p50 / p95 / p99"] == ("data", True), panels
    assert panels["CPU"] == ("nodata", False), panels
    # The latency panel draws its exemplars (diamonds that open the trace) and links the latest.
    latency = re.search(r'<div class="panel" data-panel-id="4".*?<div class="meta">(.*?)</div>', dom, re.S)
    assert latency and 'data-exemplars="' in latency[0] and 'href="#traces/' in latency[1], latency
    assert re.search(r'id="dash-status"[^>]*>\d+ of 10 panels with data', dom), dom[:3000]
    # The variables are drop-downs filled from Prometheus, this test's service among them.
    assert re.search(rf'<select data-name="service">.*<option value="{SERVICE}">', dom, re.S)
    shot = Path(os.environ.get("MESHWATCH_CONSOLE_SCREENSHOT") or tmp_path / "console-dashboards.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    _browser(url, f"--screenshot={shot}")
    assert shot.stat().st_size > 20_000


def test_trace_waterfall_and_log_links_in_chromium(console: Any, sent_trace: str, logged: str) -> None:
    dom = _browser(f"{console.url}/#traces/{sent_trace}")
    assert dom.count('class="span-row"') == 2, dom[-3000:]
    assert "charge card" in dom and 'class="bar err"' in dom  # the failed child span is marked
    assert f'href="#logs?trace_id={sent_trace}"' in dom  # trace → its logs
    logs = _browser(f"{console.url}/#logs?trace_id={sent_trace}")
    assert "card declined by issuer" in logs, logs[-3000:]
    assert f'href="#traces/{sent_trace}"' in logs  # log → its trace
    assert "payment accepted" not in logs  # only this trace's record


def test_alerts_and_explore_in_chromium(console: Any, alert_rules: None, scraped: None) -> None:
    from meshwatch.stack.testing import eventually

    eventually(lambda: "ConsoleTestFiring" in _browser(f"{console.url}/#alerts", budget_ms=5000), timeout=30)
    dom = _browser(f"{console.url}/#alerts")
    assert 'href="https://runbooks.test/Firing.md"' in dom and "ConsoleTestPending" in dom
    assert 'href="#explore?q=vector(1)"' in dom  # an alert's query opens in Explore
    explore = _browser(f"{console.url}/#explore?q=rate(console_test_requests_total%5B5s%5D)")
    assert re.search(r'id="explore-chart"[^>]*data-state="data"', explore), explore[-3000:]
    assert "<canvas" in explore
    misspelt = _browser(f"{console.url}/#explore?q=console_test_reqests_total")
    assert "No data: the query returned no series" in misspelt


@pytest.mark.parametrize("name", ["endpoint-detail", "logs", "pipeline-health", "service-dependencies", "slo"])
def test_every_dashboard_lays_out_its_panels_in_chromium(console: Any, scraped: None, logged: str, name: str) -> None:
    # Whatever the test backends hold, each panel ends in a state the page states: drawn, "No data",
    # or the query's error; never a page-side failure to draw what a backend answered.
    dom = _browser(f"{console.url}/#dashboards/{name}?range=15m")
    assert 'data-ready="true"' in dom
    panels = _panels(dom)
    assert panels and all(state in ("data", "nodata", "error") for state, _ in panels.values()), panels
    assert "Cannot draw" not in dom, re.findall(r"Cannot draw[^<]*", dom)
    assert all(canvas or state != "data" or "<table" in dom for state, canvas in panels.values())
