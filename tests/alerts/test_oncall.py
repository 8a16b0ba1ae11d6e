"""The on-call webhook records what Alertmanager posts, shows it as JSON and HTML, and refuses bad input."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from meshwatch.demo.oncall import OncallServer


def _payload(status: str, **labels: str) -> dict:
    return {
        "version": "4",
        "status": status,
        "receiver": "oncall",
        "groupLabels": {"alertname": labels.get("alertname", "X")},
        "alerts": [
            {
                "status": status,
                "labels": {"severity": "critical", **labels},
                "annotations": {"summary": "<b>checkout</b> fails"},
                "startsAt": "2026-01-01T00:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": "abc123",
            }
        ],
    }


@pytest.fixture
def oncall() -> Iterator[OncallServer]:
    with OncallServer(port=0) as server:
        yield server


def test_records_firing_then_resolved(oncall: OncallServer) -> None:
    firing = _payload("firing", alertname="MeshwatchHTTPErrorRateHigh", service="checkout")
    assert httpx.post(oncall.webhook_url("oncall"), json=firing).json() == {"recorded": 1}
    current = httpx.get(f"{oncall.url}/api/alerts", params={"status": "firing"}).json()
    assert [(a["labels"]["alertname"], a["receiver"]) for a in current] == [("MeshwatchHTTPErrorRateHigh", "oncall")]

    httpx.post(oncall.webhook_url("oncall"), json=_payload("resolved", alertname="MeshwatchHTTPErrorRateHigh"))
    assert httpx.get(f"{oncall.url}/api/alerts", params={"status": "firing"}).json() == []
    assert len(httpx.get(f"{oncall.url}/api/notifications", params={"receiver": "oncall"}).json()) == 2
    assert httpx.get(f"{oncall.url}/api/notifications", params={"receiver": "ticket"}).json() == []


def test_html_page_escapes_alert_text(oncall: OncallServer) -> None:
    httpx.post(oncall.webhook_url("oncall"), json=_payload("firing", alertname="<script>x</script>"))
    page = httpx.get(oncall.url + "/")
    assert page.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;x&lt;/script&gt;" in page.text
    assert "<script>" not in page.text
    assert "&lt;b&gt;checkout&lt;/b&gt; fails" in page.text


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/webhook/oncall", b"not json", 400, "not JSON"),
        ("/webhook/oncall", b"[1, 2]", 400, "JSON object"),
        ("/webhook/oncall", b'{"status": "firing"}', 400, "'alerts'"),
        ("/webhook/oncall", b'{"alerts": [1]}', 400, "alerts[0]"),
        ("/elsewhere", b"{}", 404, "/webhook/<receiver>"),
    ],
)
def test_bad_requests_are_refused_and_counted(
    oncall: OncallServer, path: str, body: bytes, status: int, message: str
) -> None:
    response = httpx.post(oncall.url + path, content=body)
    assert response.status_code == status
    assert message in response.json()["error"]
    health = httpx.get(oncall.url + "/healthz").json()
    assert health["status"] == "ok"
    assert sum(health["rejected"].values()) == 1
    assert health["received"] == 0


def test_oversized_body_is_refused(oncall: OncallServer) -> None:
    response = httpx.post(oncall.webhook_url("oncall"), content=b"x" * (2 << 20))
    assert response.status_code == 413
    assert httpx.get(oncall.url + "/healthz").json()["rejected"] == {"too_large": 1}


def test_history_is_bounded_and_evictions_counted() -> None:
    with OncallServer(port=0, history=2) as server:
        for _ in range(3):
            httpx.post(server.webhook_url("heartbeat"), json=_payload("firing", alertname="Watchdog"))
        health = httpx.get(server.url + "/healthz").json()
        assert (health["received"], health["kept"], health["evicted"]) == (3, 2, 1)
