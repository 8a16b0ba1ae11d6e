"""Live: the generated rules in the real Prometheus, the generated routing in the real Alertmanager.

A service stand-in (a prometheus-client endpoint exposing the contract's
``http_server_request_duration_seconds`` histogram, job ``shop/basket``) is scraped every
second. Its 5xx share rises from 0 to 50% and back to 0; the test sees the error-rate and
fast-burn alerts delivered to the on-call webhook (critical), the matching warnings held back
by inhibition, the Watchdog delivered to the heartbeat receiver, and the error-rate alert
resolve. Only `for` and the RED rate window are shortened (generator parameters), so it
runs in about a minute; the routing is the committed one with the webhook's URLs. The service
is one no other test or the demo uses, with its own SLO spec, so the shared Prometheus' history
(the demo's services run with faults in the same session) cannot fire or hide its alerts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, start_http_server

from meshwatch.alerts import Params, Receivers, Timing, alertmanager_config, rule_files
from meshwatch.demo.oncall import OncallServer
from meshwatch.stack.testing import eventually

pytestmark = pytest.mark.integration

SERVICE = "basket"
SPEC = "slos:\n  - service: basket\n    availability: {objective: 99.9}\n"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
LABELS = ("http_request_method", "http_route", "http_response_status_code", "url_scheme")


class FakeTraffic:
    """Real HTTP metrics in the contract's shape, with a settable 5xx share, served for scraping."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.histogram = Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests.",
            LABELS,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.error_share = 0.0
        self._stop = threading.Event()
        self._server, self._thread = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.port = self._server.server_address[1]
        self._worker = threading.Thread(target=self._run, daemon=True)
        self._worker.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):  # 20 requests per 100 ms
            errors = round(20 * self.error_share)
            for i in range(20):
                status = "500" if i < errors else "200"
                self.histogram.labels("POST", "/pay", status, "http").observe(0.02)

    def close(self) -> None:
        self._stop.set()
        self._worker.join(timeout=5)
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def traffic() -> Iterator[FakeTraffic]:
    source = FakeTraffic()
    yield source
    source.close()


@pytest.fixture
def oncall() -> Iterator[OncallServer]:
    with OncallServer(port=0) as server:
        yield server


def _query(prometheus: Any, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=10)
    response.raise_for_status()
    return response.json()["data"]["result"]


def _received(oncall: OncallServer, receiver: str, alertname: str, status: str) -> list[dict[str, Any]]:
    return [
        a
        for a in oncall.inbox.alerts(receiver, status)
        if a["labels"].get("alertname") == alertname and a["labels"].get("service") in (None, SERVICE)
    ]


def _am_alerts(alertmanager: Any, alertname: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{alertmanager.url}/api/v2/alerts",
        params={"filter": [f'alertname="{alertname}"', f'service="{SERVICE}"']},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()


def test_error_burst_pages_oncall_then_resolves(
    prometheus: Any, alertmanager: Any, oncall: OncallServer, traffic: FakeTraffic, tmp_path: Path
) -> None:
    spec = tmp_path / "slos.yaml"
    spec.write_text(SPEC)
    rules = rule_files(tmp_path / "rules", spec, params=Params(for_override="5s", red_window="15s"))
    receivers = Receivers(
        oncall=oncall.webhook_url("oncall"),
        ticket=oncall.webhook_url("ticket"),
        heartbeat=oncall.webhook_url("heartbeat"),
    )
    timing = Timing(group_wait="1s", group_interval="2s", repeat_interval="1h", heartbeat_repeat_interval="5s")
    alertmanager.set_alertmanager_config(alertmanager_config(receivers, timing))
    prometheus.set_rule_files(rules)
    prometheus.add_scrape_target("alerts-live-basket", f"127.0.0.1:{traffic.port}", {"job": f"shop/{SERVICE}"})
    try:
        # Healthy: the error ratio is recorded as 0 (not absent), and the Watchdog reaches the
        # heartbeat receiver, which proves rules → Alertmanager → webhook works end to end.
        ratio = "job_service:http_server_error_ratio:rate15s"
        eventually(
            lambda: [r for r in _query(prometheus, f'{ratio}{{service="{SERVICE}"}}') if float(r["value"][1]) == 0],
            timeout=60,
            what=f"the {SERVICE} error ratio recorded as 0 from scraped series",
        )
        watchdog = eventually(
            lambda: _received(oncall, "heartbeat", "Watchdog", "firing"), timeout=60, what="Watchdog heartbeat"
        )
        assert watchdog[0]["labels"]["severity"] == "none"
        assert not [a for a in oncall.inbox.alerts("oncall") if a["labels"].get("service") == SERVICE]

        # Half the requests fail: the critical error-rate alert pages on-call with its exact labels.
        traffic.error_share = 0.5
        paged = eventually(
            lambda: _received(oncall, "oncall", "MeshwatchHTTPErrorRateHigh", "firing"),
            timeout=90,
            what="MeshwatchHTTPErrorRateHigh delivered to the on-call webhook",
        )
        assert paged[0]["labels"] == {
            "alertname": "MeshwatchHTTPErrorRateHigh",
            "severity": "critical",
            "job": f"shop/{SERVICE}",
            "service": SERVICE,
        }
        annotations = paged[0]["annotations"]
        assert annotations["runbook_url"] == "docs/runbooks/MeshwatchHTTPErrorRateHigh.md"
        assert annotations["summary"] == f"{SERVICE} fails more than 5% of its HTTP requests"
        assert "the critical threshold is 5%" in annotations["description"]

        # The SLO fast burn (14.4× over 1h and 5m) pages too.
        burn = eventually(
            lambda: _received(oncall, "oncall", "MeshwatchErrorBudgetBurn", "firing"),
            timeout=60,
            what="MeshwatchErrorBudgetBurn delivered to the on-call webhook",
        )
        assert {(a["labels"]["slo"], a["labels"]["long_window"]) for a in burn} >= {("availability", "1h")}

        # The warning of the same family fires in Prometheus but Alertmanager inhibits it: it never
        # reaches the ticket receiver while the critical fires.
        def inhibited() -> list[dict[str, Any]]:
            return [
                a
                for a in _am_alerts(alertmanager, "MeshwatchHTTPErrorRateHigh")
                if a["labels"]["severity"] == "warning" and a["status"]["inhibitedBy"]
            ]

        eventually(inhibited, timeout=30, what="the warning MeshwatchHTTPErrorRateHigh inhibited by the critical")
        assert not _received(oncall, "ticket", "MeshwatchHTTPErrorRateHigh", "firing")
        assert not _received(oncall, "ticket", "MeshwatchErrorBudgetBurn", "firing")

        # Errors stop: the error-rate alert resolves and on-call is told so.
        errors_stopped = time.time()
        traffic.error_share = 0.0
        resolved = eventually(
            lambda: _received(oncall, "oncall", "MeshwatchHTTPErrorRateHigh", "resolved"),
            timeout=120,
            what="MeshwatchHTTPErrorRateHigh resolved at the on-call webhook",
        )
        assert resolved[0]["labels"]["severity"] == "critical"
        # While the ratio decays through 1-5% the critical resolves first and the warning, no longer
        # inhibited, may then reach the ticket receiver: never while the errors were still at 50%.
        for ticket in _received(oncall, "ticket", "MeshwatchHTTPErrorRateHigh", "firing"):
            assert ticket["notified_at"] >= errors_stopped
    finally:
        prometheus.remove_scrape_target("alerts-live-basket")
        prometheus.set_rule_files([])
        alertmanager.set_alertmanager_config(
            {"route": {"receiver": "null", "group_by": ["alertname"]}, "receivers": [{"name": "null"}]}
        )
