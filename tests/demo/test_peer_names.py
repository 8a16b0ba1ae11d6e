"""Calls name the service they went to (issue 15 item 3): ``gateway → orders``, not ``gateway → 127.0.0.1``.

On loopback every peer is ``127.0.0.1``; the demo gives each service the SDK's
``peer_service_mapping`` from its port table, so the client spans carry ``peer.service``
and ``http.client.request.duration`` a ``peer_service`` label, which the "Outgoing call
latency" panel shows. The panel's own query is run here, so a legend that falls back to
the host address fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshwatch.demo.platform import Platform
from meshwatch.stack import Server
from meshwatch.stack.testing import eventually

from .conftest import get_json, promql

pytestmark = pytest.mark.e2e


def _outgoing_panel_query() -> str:
    """The panel's query as committed in the dashboard JSON users import, for every service."""
    data = json.loads((Path(__file__).resolve().parents[2] / "dashboards/json/service-overview.json").read_text())
    (panel,) = [p for p in data["panels"] if p.get("title") == "Outgoing call latency p95"]
    return panel["targets"][0]["expr"].replace("$__rate_interval", "1m").replace("$service", ".+")


def test_the_gateways_calls_are_named_by_the_service_they_reached(platform: Platform, prometheus: Server) -> None:
    expr = _outgoing_panel_query()
    peers = eventually(
        lambda: {
            r["metric"].get("peer")
            for r in promql(prometheus, expr)
            if r["metric"].get("job", "").rsplit("/", 1)[-1] == "gateway"
        },
        timeout=90,
        what="the gateway's outgoing calls in the panel's query",
    )
    assert peers >= {"orders", "inventory"}, peers
    assert not {p for p in peers if p and p[0].isdigit()}, f"a call still named by its address: {peers}"


def test_a_gateway_client_span_in_jaeger_names_its_peer(platform: Platform, jaeger: Server) -> None:
    def client_peers() -> set[str]:
        traces = get_json(f"{jaeger.url}/api/traces", service="gateway", limit=20, lookback="5m")["data"]
        return {
            tag["value"]
            for trace in traces
            for span in trace["spans"]
            for tag in span["tags"]
            if tag["key"] == "peer.service" and trace["processes"][span["processID"]]["serviceName"] == "gateway"
        }

    peers = eventually(client_peers, timeout=90, what="peer.service on the gateway's client spans")
    assert "orders" in peers or "inventory" in peers, peers
