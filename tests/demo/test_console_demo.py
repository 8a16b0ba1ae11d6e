"""What ``make demo`` prints and links, on the running demo: the console first, APIs said to be APIs.

The platform is tests/demo/conftest.py's (one start-up for the package). A newcomer opens the
first URL of the printed table: it must be the console's page. The Prometheus, Jaeger and
Alertmanager lines are APIs (no web UI is built here), each printed with a request that answers.
An alert's ``generatorURL`` (what Alertmanager and the on-call page link as "source") must open
the console's Explore view with the alert's expression, not Prometheus' UI-less ``/graph``.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from meshwatch.demo import cli
from meshwatch.demo.platform import Platform
from meshwatch.stack import Server
from meshwatch.stack.testing import eventually

from .conftest import get_json

pytestmark = pytest.mark.e2e


def _table_urls(table: str) -> list[tuple[str, str]]:
    rows = [line.strip().rsplit("  ", 1) for line in table.splitlines()]
    return [(what.strip(), url.strip()) for what, url in rows]


def test_the_printed_table_starts_with_the_console_and_its_api_lines_answer(platform: Platform) -> None:
    rows = _table_urls(cli.url_table(platform.urls()))
    what, url = rows[0]
    assert what.startswith("Console"), rows
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>meshwatch console</title>" in page.text
    # The console reads the demo's backends, not the usual ports it defaults to.
    config = httpx.get(f"{url}/api/config", timeout=10).json()
    assert config["prometheus"] == platform.server("prometheus").url
    assert config["jaeger"] == platform.server("jaeger").url

    apis = {w.split()[0]: u for w, u in rows if "(no web UI)" in w}
    assert set(apis) == {"Prometheus", "Jaeger", "Alertmanager"}, rows
    for name, example in apis.items():
        answer = httpx.get(example, timeout=10)
        assert answer.status_code == 200, f"{name}: {example} → {answer.status_code}"
        assert answer.headers["content-type"].startswith("application/json"), f"{name}: {example}"
    assert get_json(apis["Prometheus"])["data"]["result"], "the Prometheus example finds no series"


def test_a_firing_alerts_generator_url_opens_the_console_explore(platform: Platform, alertmanager: Server) -> None:
    console = platform.server("console").url

    def watchdog() -> list[dict[str, str]]:
        alerts = get_json(f"{alertmanager.url}/api/v2/alerts")
        return [a for a in alerts if a["labels"].get("alertname") == "Watchdog"]

    alert = eventually(watchdog, timeout=90, what="the demo's Watchdog alert in Alertmanager")[0]
    link = alert["generatorURL"]
    assert link.startswith(f"{console}/graph?"), f"generatorURL {link} does not point at the console {console}"
    hop = httpx.get(link, timeout=10)
    assert hop.status_code == 302, f"{link} → {hop.status_code}"
    fragment = urlsplit(hop.headers["location"]).fragment
    assert fragment.startswith("explore?")
    assert parse_qs(fragment.removeprefix("explore?"))["q"] == ["vector(1)"]
    page = httpx.get(link, timeout=10, follow_redirects=True)
    assert page.status_code == 200 and "<title>meshwatch console</title>" in page.text
