"""Endpoint detail: one service's routes — latency heatmap and percentiles, top slow and failing routes."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, table, timeseries

from .._sdk import JAEGER, PROM, jaeger_search, prom, prom_variable, trace_link
from .common import environment_variable, frame, service_variable

H = "http_server_request_duration_seconds"
SEL = 'job=~"(.*/)?($service)", http_route=~"$route"'


def _route_variable() -> db.QueryVariable:
    return prom_variable("route", "Route", f'label_values({H}_count{{job=~"(.*/)?($service)"}}, http_route)')


def _ts(title: str, description: str, unit: str, *targets: object, w: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).datasource(PROM).unit(unit).span(w).height(8)
    for target in targets:
        panel = panel.with_target(target)  # type: ignore[arg-type]
    return panel


def _route_quantile(q: float, ref: str) -> object:
    return prom(
        f"histogram_quantile({q}, sum by (http_route, le) (rate({H}_bucket{{{SEL}}}[$__rate_interval])))",
        f"{{{{http_route}}}} p{round(q * 100)}",
        ref=ref,
        exemplar=True,
    )


def build() -> db.Dashboard:
    rate_all = f"sum by (http_route) (rate({H}_count{{{SEL}}}[$__range]))"
    rate_5xx = f'sum by (http_route) (rate({H}_count{{{SEL}, http_response_status_code=~"5.."}}[$__range]))'
    return (
        frame(
            "endpoint-detail",
            "Endpoint detail",
            "One service's HTTP routes: latency distribution, percentiles, the slowest and the most failing routes.",
        )
        .with_variable(environment_variable())
        .with_variable(service_variable(multi=False))
        .with_variable(_route_variable())
        .with_panel(
            heatmap.Panel()
            .title("Latency heatmap")
            .description("Requests per duration bucket over time (all selected routes).")
            .datasource(PROM)
            .span(24)
            .height(9)
            .calculate(False)
            .unit("s")
            .with_target(prom(f"sum by (le) (increase({H}_bucket{{{SEL}}}[$__rate_interval]))", "{{le}}", heatmap=True))
        )
        .with_panel(
            _ts(
                "Latency percentiles by route",
                "p50, p95 and p99 per route; exemplars open traces.",
                "s",
                _route_quantile(0.5, "A"),
                _route_quantile(0.95, "B"),
                _route_quantile(0.99, "C"),
                w=24,
            )
        )
        .with_panel(
            table.Panel()
            .title("Top slow routes (p95 over the time range)")
            .datasource(PROM)
            .span(12)
            .height(8)
            .unit("s")
            .with_target(
                prom(
                    "topk(10, histogram_quantile(0.95, sum by (http_route, le) "
                    f"(rate({H}_bucket{{{SEL}}}[$__range]))))",
                    instant=True,
                    table=True,
                )
            )
        )
        .with_panel(
            table.Panel()
            .title("Top failing routes (5xx share over the time range)")
            .datasource(PROM)
            .span(12)
            .height(8)
            .unit("percentunit")
            .with_target(prom(f"topk(10, ({rate_5xx} or {rate_all} * 0) / {rate_all})", instant=True, table=True))
        )
        .with_panel(
            _ts(
                "Request rate by route",
                "Requests per second per route and status code.",
                "reqps",
                prom(
                    f"sum by (http_route, http_response_status_code) (rate({H}_count{{{SEL}}}[$__rate_interval]))",
                    "{{http_route}} {{http_response_status_code}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Server spans per second by span name",
                "From the collector's spanmetrics: calls per span name and status.",
                "reqps",
                prom(
                    'sum by (span_name, status_code) (rate(traces_span_metrics_calls_total{service_name=~"$service", '
                    'span_kind="SPAN_KIND_SERVER"}[$__rate_interval]))',
                    "{{span_name}} {{status_code}}",
                ),
            )
        )
        .with_panel(
            table.Panel()
            .title("Traces of the service")
            .description("The latest traces of the service in Jaeger; click a trace id to open it.")
            .datasource(JAEGER)
            .span(24)
            .height(9)
            .with_target(jaeger_search("$service", limit=20))
            .override_by_name(*trace_link("traceID"))
        )
    )
