"""Service dependencies: the node graph from the collector's servicegraph metrics, per-edge RED."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import nodegraph, timeseries

from .._sdk import JAEGER, PROM, jaeger_dependencies, organize, prom
from .common import frame

G = "traces_service_graph_request"
EDGE_RATE = f"sum by (client, server) (rate({G}_total[$__rate_interval]))"
EDGE_FAILED = f"sum by (client, server) (rate({G}_failed_total[$__rate_interval]))"


def _ts(title: str, description: str, unit: str, *targets: object) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).datasource(PROM).unit(unit).span(12).height(8)
    for target in targets:
        panel = panel.with_target(target)  # type: ignore[arg-type]
    return panel


def build() -> db.Dashboard:
    # Node graph frames: nodes need `id` (+ `mainstat`), edges `id`, `source`, `target` (+ `mainstat`).
    nodes = (
        f'sum by (id) (label_replace(rate({G}_total[$__range]), "id", "$1", "server", "(.+)"))'
        f' or sum by (id) (label_replace(rate({G}_total[$__range]), "id", "$1", "client", "(.+)")) * 0'
    )
    edges = f'label_join(sum by (client, server) (rate({G}_total[$__range])), "id", "→", "client", "server")'
    return (
        frame(
            "service-dependencies",
            "Service dependencies",
            "Who calls whom, from spans (collector servicegraph connector): request rate, errors and latency per edge.",
        )
        .with_panel(
            nodegraph.Panel()
            .title("Service graph")
            .description("Nodes: requests/s each service receives. Edges: requests/s from client to server.")
            .datasource(PROM)
            .span(24)
            .height(12)
            .nodes(nodegraph.NodeOptions().main_stat_unit("reqps"))
            .edges(nodegraph.EdgeOptions().main_stat_unit("reqps"))
            .with_target(prom(nodes, ref="nodes", instant=True, table=True))
            .with_target(prom(edges, ref="edges", instant=True, table=True))
            .with_transformation(
                organize(
                    rename={
                        "client": "source",
                        "server": "target",
                        "Value #nodes": "mainstat",
                        "Value #edges": "mainstat",
                    },
                    exclude=["Time"],
                )
            )
        )
        .with_panel(
            _ts(
                "Requests per edge",
                "Requests per second from client to server.",
                "reqps",
                prom(EDGE_RATE, "{{client}} → {{server}}"),
            )
        )
        .with_panel(
            _ts(
                "Error % per edge",
                "Share of failed requests per edge (0 when none failed).",
                "percentunit",
                prom(f"({EDGE_FAILED} or {EDGE_RATE} * 0) / {EDGE_RATE}", "{{client}} → {{server}}"),
            )
        )
        .with_panel(
            _ts(
                "Latency p95 per edge (server side)",
                "How long the server took, per edge.",
                "s",
                prom(
                    "histogram_quantile(0.95, sum by (client, server, le) "
                    f"(rate({G}_server_seconds_bucket[$__rate_interval])))",
                    "{{client}} → {{server}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Latency p95 per edge (client side)",
                "How long the client waited, per edge: the gap to the server side is network and queueing.",
                "s",
                prom(
                    "histogram_quantile(0.95, sum by (client, server, le) "
                    f"(rate({G}_client_seconds_bucket[$__rate_interval])))",
                    "{{client}} → {{server}}",
                ),
            )
        )
        .with_panel(
            nodegraph.Panel()
            .title("Dependencies recorded by Jaeger")
            .description("Jaeger's own dependency graph from the stored traces, to cross-check the service graph.")
            .datasource(JAEGER)
            .span(24)
            .height(10)
            .with_target(jaeger_dependencies())
        )
    )
