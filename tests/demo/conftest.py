"""One demo platform for every test of tests/demo: started once, shared, stopped at the end.

The platform (the meshwatch collector with its default config, the on-call webhook, the six
services and the load generator, started by ``meshwatch.demo.platform`` as ``make demo`` does)
runs on the session's Jaeger, Prometheus, Alertmanager, Elasticsearch, Redis and NATS. Starting
it is most of a demo test's time, so the end-to-end, dashboard and alerting tests share one
start-up (package scope: it is stopped once the last test here is done, not left running under
the rest of the suite). A test that loads rules or routing of its own puts the platform's back
with :meth:`Platform.configure_alerting`; at the end the shared Prometheus and Alertmanager are
left as the session started them: no rules, a route to nowhere, and no alert still active (see
:func:`settle_alertmanager`).
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from meshwatch.alerts import Receivers, Timing, alertmanager_config
from meshwatch.demo.oncall import OncallServer
from meshwatch.demo.platform import Platform, PlatformOptions
from meshwatch.stack import Server, Stack
from meshwatch.stack.testing import eventually

#: Alertmanager's config while no test needs one: route everything nowhere.
NULL_ALERTMANAGER = {"route": {"receiver": "null", "group_by": ["alertname"]}, "receivers": [{"name": "null"}]}


def get_json(url: str, **params: Any) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}{query}", timeout=10) as response:
        return json.loads(response.read())


def post_json(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def expire_alerts(alertmanager: Server) -> None:
    """End every alert still active in the shared Alertmanager, without notifying anyone.

    For leftovers of earlier test packages (tests/alerts' live test routes its alerts to
    receivers of its own): ended now, they cannot be re-notified to the demo's receivers.
    """
    alertmanager.set_alertmanager_config(NULL_ALERTMANAGER)
    active = get_json(f"{alertmanager.url}/api/v2/alerts")
    if active:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        post_json(
            f"{alertmanager.url}/api/v2/alerts",
            [{"labels": a["labels"], "annotations": a["annotations"], "endsAt": now} for a in active],
        )
        eventually(
            lambda: not get_json(f"{alertmanager.url}/api/v2/alerts"),
            timeout=60,
            what=f"Alertmanager to end the {len(active)} alerts earlier tests left active",
        )


def settle_alertmanager(alertmanager: Server) -> None:
    """Resolve every alert still active in the shared Alertmanager, through a live receiver, then route to nowhere.

    Faults leave alerts firing for minutes after the platform stops (an SLO burn's 5-minute
    window). Alertmanager remembers per receiver name and group what it last notified and does
    not notify the same firing alert again within ``repeat_interval``, even after a config
    reload: a later test's identical alert (``MeshwatchErrorBudgetBurn`` for ``orders`` to
    ``oncall``) would never be delivered. Resolving them with a receiver that answers records
    "all resolved" for each group, so the next firing is notified afresh. Awaited: every group
    that had surely been notified (an alert active longer than any group wait, not inhibited or
    silenced) hears "resolved".
    """
    active = get_json(f"{alertmanager.url}/api/v2/alerts")
    if active:
        with OncallServer(port=0) as sink:
            receivers = Receivers(*(sink.webhook_url(name) for name in ("oncall", "ticket", "heartbeat")))
            timing = Timing(group_wait="0s", group_interval="1s", repeat_interval="1h", heartbeat_repeat_interval="1s")
            alertmanager.set_alertmanager_config(alertmanager_config(receivers, timing))
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            post_json(
                f"{alertmanager.url}/api/v2/alerts",
                [{"labels": a["labels"], "annotations": a["annotations"], "endsAt": now} for a in active],
            )
            notified_before = time.time() - 35  # production group_wait is 30s
            groups = {
                (receiver["name"], a["labels"].get("alertname"), a["labels"].get("service"))
                for a in active
                if not (a["status"]["inhibitedBy"] or a["status"]["silencedBy"])
                and datetime.fromisoformat(a["startsAt"].replace("Z", "+00:00")).timestamp() < notified_before
                for receiver in a["receivers"]
            }

            def told_resolved() -> set[tuple[str, Any, Any]]:
                told = {
                    (n["receiver"], n["group_labels"].get("alertname"), n["group_labels"].get("service"))
                    for n in sink.inbox.notifications()
                    if n["status"] == "resolved"
                }
                return groups - told

            eventually(
                lambda: not get_json(f"{alertmanager.url}/api/v2/alerts") and not told_resolved(),
                timeout=60,
                what=f"Alertmanager to resolve the {len(active)} alerts the demo left active",
            )
    alertmanager.set_alertmanager_config(NULL_ALERTMANAGER)


def promql(prometheus: Server, query: str) -> list[dict[str, Any]]:
    return get_json(f"{prometheus.url}/api/v1/query", query=query)["data"]["result"]


@pytest.fixture(scope="package")
def platform(  # noqa: PLR0917 (each backend is its own session fixture)
    stack: Stack,
    jaeger: Server,
    prometheus: Server,
    alertmanager: Server,
    elasticsearch: Server,
    redis_server: Server,
    nats_server: Server,
) -> Iterator[Platform]:
    options = PlatformOptions(
        rate=10.0,  # about 2.5 checkouts/s reach payments
        fixed_ports=False,
        metric_interval_ms=1000,
        scrape_interval="1s",
        progress=lambda message: print(f"platform: {message}", flush=True),
    )
    # Alerts that earlier test packages left active (e.g. tests/alerts' live test) would
    # otherwise be re-notified to the demo's receivers, with their own annotations.
    expire_alerts(alertmanager)
    running = Platform(stack, options)
    try:
        running.up()
        yield running
    finally:
        running.stop_processes()
        # Leave the shared Prometheus and Alertmanager as the session started them.
        prometheus.set_rule_files([])
        settle_alertmanager(alertmanager)
