"""Fault → alert → on-call → resolve on the running demo, and runbook links that open.

The project's rules (generated from alerts/slos.yaml with only ``for`` and the RED rate window
shortened, so this takes about a minute instead of six) go into the shared Prometheus, which
scrapes the demo; the shared Alertmanager gets the project's routing (alerts/alertmanager.yml)
with short group timings, pointed at an on-call webhook this test runs. Half of payments'
requests are then made to fail through the demo's fault admin API: the real Alertmanager must
deliver the critical ``MeshwatchHTTPErrorRateHigh`` for payments to the on-call receiver, with
its labels, annotations and a runbook link that answers with that runbook; clearing the fault
must deliver ``resolved``. The platform's own rules and routing are put back afterwards.

Separately: the rules the demo platform loads itself link every alert to its on-call service's
``/runbooks/<AlertName>.md``, and every one of those pages opens.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshwatch.alerts import Params, Receivers, Timing, alertmanager_config, rule_files
from meshwatch.demo import cli
from meshwatch.demo.oncall import OncallServer
from meshwatch.demo.platform import Platform
from meshwatch.stack import Server
from meshwatch.stack.testing import eventually

from .conftest import get_json, promql

pytestmark = pytest.mark.e2e

FAULTY = "payments"
RED_WINDOW = "15s"


@pytest.fixture
def oncall() -> Iterator[OncallServer]:
    with OncallServer(port=0) as server:
        yield server


def _received(oncall: OncallServer, alertname: str, status: str, since: float) -> list[dict[str, Any]]:
    """Alerts of ``alertname`` for the faulty service whose latest notification (after ``since``) is ``status``."""
    return [
        a
        for a in oncall.inbox.alerts("oncall", status)
        if a["labels"].get("alertname") == alertname
        and a["labels"].get("service") == FAULTY
        and a["labels"].get("severity") == "critical"
        and a["notified_at"] >= since
    ]


def _runbook_title(url: str) -> str:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, f"{url}: HTTP {response.status_code} {response.text[:200]}"
    assert response.headers["content-type"].startswith("text/html")
    title = response.text.split("<h1>", 1)[1].split("</h1>", 1)[0]
    assert f"<title>{title} · meshwatch runbook</title>" in response.text
    return title


def _firing_alert_opens_its_runbook_in_chromium(console: str, runbook_url: str, shots: Path) -> None:
    """In headless Chromium, the console's alerts view: the MeshwatchHTTPErrorRateHigh of the
    faulty service, firing in Prometheus' rules and active in Alertmanager, each with its runbook link; a
    click on it opens the runbook (a new tab, as the link says)."""
    from selenium.webdriver.common.by import By

    from ._chromium import chromium, open_console, screenshot, table_rows, wait_for

    alert = "MeshwatchHTTPErrorRateHigh"
    with chromium() as driver:
        open_console(driver, f"{console}/#alerts")

        def listed(css: str, state: str) -> list[Any]:
            # state, alert, severity, labels, summary or receivers, since, runbook, query
            return [
                row
                for cells, row in table_rows(driver, css)
                if cells[:3] == [state, alert, "critical"] and f"service={FAULTY}" in cells[3]
            ]

        def both() -> tuple[Any, Any] | None:
            driver.find_element(By.ID, "alerts-run").click()
            wait_for(lambda: "from rules" in driver.find_element(By.ID, "alerts-status").text, timeout=20, what="load")
            rules, manager = listed("#alerts-prometheus", "firing"), listed("#alerts-alertmanager", "active")
            return (rules[0], manager[0]) if rules and manager else None

        rows = wait_for(both, timeout=60, interval=2, what=f"{alert} for {FAULTY} firing in the console's alerts view")
        for row in rows:
            link = row.find_element(By.LINK_TEXT, "runbook")
            assert link.get_attribute("href") == runbook_url
        screenshot(driver, "console-demo-alerts.png", shots)
        before = set(driver.window_handles)
        rows[0].find_element(By.LINK_TEXT, "runbook").click()
        opened = wait_for(lambda: set(driver.window_handles) - before, timeout=10, what="the runbook's tab")
        driver.switch_to.window(opened.pop())
        title = wait_for(lambda: driver.find_elements(By.TAG_NAME, "h1"), timeout=20, what="the runbook page")[0].text
        assert title == alert and driver.title == f"{alert} · meshwatch runbook", (title, driver.title)


def test_a_fault_pages_oncall_with_its_runbook_then_resolves(
    platform: Platform, prometheus: Server, alertmanager: Server, oncall: OncallServer, tmp_path: Path
) -> None:
    params = Params(for_override="5s", red_window=RED_WINDOW, runbook_base_url=oncall.runbook_base_url)
    rules = rule_files(tmp_path / "rules", platform.options.slo_spec, params)
    receivers = Receivers(
        oncall=oncall.webhook_url("oncall"),
        ticket=oncall.webhook_url("ticket"),
        heartbeat=oncall.webhook_url("heartbeat"),
    )
    timing = Timing(group_wait="1s", group_interval="2s", repeat_interval="1h", heartbeat_repeat_interval="5s")
    state = ["--state-dir", str(platform.stack.state_dir)]
    alertmanager.set_alertmanager_config(alertmanager_config(receivers, timing))
    prometheus.set_rule_files(rules)
    try:
        # Healthy first: payments' error ratio is recorded and low, and the Watchdog reaches the
        # heartbeat receiver (rules → Alertmanager → this webhook works).
        ratio = f'job_service:http_server_error_ratio:rate{RED_WINDOW}{{service="{FAULTY}"}}'
        eventually(
            lambda: [r for r in promql(prometheus, ratio) if float(r["value"][1]) < 0.05],
            timeout=90,
            what=f"{FAULTY}'s error ratio recorded and under 5% before the fault",
        )
        eventually(lambda: oncall.inbox.alerts("heartbeat", "firing"), timeout=60, what="the Watchdog heartbeat")

        injected = time.time()
        assert cli.main([*state, "fault", FAULTY, "--error-rate", "0.5"]) == 0
        paged = eventually(
            lambda: _received(oncall, "MeshwatchHTTPErrorRateHigh", "firing", injected),
            timeout=120,
            what=f"MeshwatchHTTPErrorRateHigh for {FAULTY} delivered to the on-call webhook",
        )
        to_page = paged[0]["notified_at"] - injected
        alert = paged[0]
        assert alert["labels"] == {
            "alertname": "MeshwatchHTTPErrorRateHigh",
            "severity": "critical",
            "job": FAULTY,
            "service": FAULTY,
        }
        annotations = alert["annotations"]
        assert annotations["summary"] == f"{FAULTY} fails more than 5% of its HTTP requests"
        assert annotations["description"].startswith(f"{FAULTY} (job {FAULTY}) failed ")
        assert f"over the last {RED_WINDOW}; the critical threshold is 5%." in annotations["description"]
        # The runbook link opens that alert's runbook.
        assert annotations["runbook_url"] == f"{oncall.url}/runbooks/MeshwatchHTTPErrorRateHigh.md"
        assert _runbook_title(annotations["runbook_url"]) == "MeshwatchHTTPErrorRateHigh"
        # While it fires, the console's alerts view lists it with that runbook, which opens.
        _firing_alert_opens_its_runbook_in_chromium(
            platform.server("console").url, annotations["runbook_url"], tmp_path
        )

        # The fault is removed: on-call hears that the alert resolved.
        cleared = time.time()
        assert cli.main([*state, "fault", FAULTY, "--clear"]) == 0
        resolved = eventually(
            lambda: _received(oncall, "MeshwatchHTTPErrorRateHigh", "resolved", cleared),
            timeout=120,
            what=f"MeshwatchHTTPErrorRateHigh for {FAULTY} resolved at the on-call webhook",
        )
        assert resolved[0]["fingerprint"] == alert["fingerprint"]
        print(
            f"fault → page {to_page:.1f}s, clear → resolved {resolved[0]['notified_at'] - cleared:.1f}s "
            f"(for {params.for_override}, RED window {RED_WINDOW}, group_wait {timing.group_wait})"
        )
        # Every page the fault caused (orders' and the gateway's too, SLO burns) links to a runbook that opens.
        pages = [a for a in oncall.inbox.alerts("oncall") if a["notified_at"] >= injected]
        assert len({a["labels"]["alertname"] for a in pages}) >= 2
        for page in pages:
            assert _runbook_title(page["annotations"]["runbook_url"]) == page["labels"]["alertname"]
    finally:
        assert cli.main([*state, "fault", FAULTY, "--clear"]) == 0
        platform.configure_alerting()  # the platform's own rules and routing back


def test_the_demo_links_every_alert_to_a_runbook_page_that_opens(platform: Platform, prometheus: Server) -> None:
    oncall_url = platform.server("oncall").url

    def loaded_alert_rules() -> list[dict[str, Any]]:
        groups = get_json(f"{prometheus.url}/api/v1/rules", type="alert")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    rules = eventually(loaded_alert_rules, timeout=30, what="the demo's alert rules in Prometheus")
    names = {rule["name"] for rule in rules}
    assert len(names) == 15
    for name in sorted(names):
        urls = {r["annotations"]["runbook_url"] for r in rules if r["name"] == name}
        assert urls == {f"{oncall_url}/runbooks/{name}.md"}
        assert _runbook_title(urls.pop()) == name
    # The index lists them all, and an unknown name is a 404 that says what exists.
    index = httpx.get(f"{oncall_url}/runbooks/", timeout=10)
    assert index.status_code == 200 and all(f"{name}.md" in index.text for name in names)
    missing = httpx.get(f"{oncall_url}/runbooks/NoSuchAlert", timeout=10)
    assert missing.status_code == 404 and "MeshwatchHTTPErrorRateHigh" in missing.text
