"""One demo platform for every test of tests/demo: started once, shared, stopped at the end.

The platform (the meshwatch collector with its default config, the on-call webhook, the six
services and the load generator, started by ``meshwatch.demo.platform`` as ``make demo`` does)
runs on the session's Jaeger, Prometheus, Alertmanager, Elasticsearch, Redis and NATS. Starting
it is most of a demo test's time, so the end-to-end, dashboard and alerting tests share one
start-up (package scope: it is stopped once the last test here is done, not left running under
the rest of the suite). A test that loads rules or routing of its own puts the platform's back
with :meth:`Platform.configure_alerting`; at the end the shared Prometheus and Alertmanager are
left as the session started them.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from meshwatch.demo.platform import Platform, PlatformOptions
from meshwatch.stack import Server, Stack

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
        return json.loads(response.read())


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
    running = Platform(stack, options)
    try:
        running.up()
        yield running
    finally:
        running.stop_processes()
        # Leave the shared Prometheus and Alertmanager as the session started them.
        prometheus.set_rule_files([])
        alertmanager.set_alertmanager_config(NULL_ALERTMANAGER)
