"""Service overview (RED): request rate, error %, latency percentiles with exemplars, saturation."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import timeseries

from .._sdk import PROM, SERVICE_JOB, prom
from .common import environment_variable, frame, service_variable

H = "http_server_request_duration_seconds"
RATE = f"sum by (job) (rate({H}_count{{{SERVICE_JOB}}}[$__rate_interval]))"
ERRORS = f'sum by (job) (rate({H}_count{{{SERVICE_JOB}, http_response_status_code=~"5.."}}[$__rate_interval]))'


def _ts(title: str, description: str, unit: str, *targets: object, w: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).datasource(PROM).unit(unit).span(w).height(8)
    for target in targets:
        panel = panel.with_target(target)  # type: ignore[arg-type]
    return panel


def _quantile(q: float, ref: str) -> object:
    return prom(
        f"histogram_quantile({q}, sum by (job, le) (rate({H}_bucket{{{SERVICE_JOB}}}[$__rate_interval])))",
        f"{{{{job}}}} p{round(q * 100)}",
        ref=ref,
        exemplar=True,
    )


def build() -> db.Dashboard:
    return (
        frame(
            "service-overview",
            "Service overview",
            "RED per service from the meshwatch instrumentation's HTTP metrics; "
            "exemplar dots open the trace in Jaeger.",
        )
        .with_variable(environment_variable())
        .with_variable(service_variable())
        .with_row(db.Row("Requests, errors, duration"))
        .with_panel(
            _ts("Request rate", "HTTP requests served per second, per service.", "reqps", prom(RATE, "{{job}}"))
        )
        .with_panel(
            _ts(
                "Error %",
                "Share of requests answered with a 5xx status (0 when there are none).",
                "percentunit",
                prom(f"({ERRORS} or {RATE} * 0) / {RATE}", "{{job}}"),
            )
        )
        .with_panel(
            _ts(
                "Latency p50 / p95 / p99",
                "Request duration percentiles; click an exemplar to open that request's trace.",
                "s",
                _quantile(0.5, "A"),
                _quantile(0.95, "B"),
                _quantile(0.99, "C"),
                w=24,
            )
        )
        .with_panel(
            _ts(
                "Responses by status code",
                "Requests per second by HTTP status code.",
                "reqps",
                prom(
                    f"sum by (job, http_response_status_code) (rate({H}_count{{{SERVICE_JOB}}}[$__rate_interval]))",
                    "{{job}} {{http_response_status_code}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Error % from traces",
                "Share of server spans with status ERROR (collector spanmetrics); covers non-HTTP servers too.",
                "percentunit",
                prom(
                    '(sum by (service_name) (rate(traces_span_metrics_calls_total{service_name=~"$service", '
                    'span_kind="SPAN_KIND_SERVER", status_code="STATUS_CODE_ERROR"}[$__rate_interval]))'
                    ' or sum by (service_name) (rate(traces_span_metrics_calls_total{service_name=~"$service", '
                    'span_kind="SPAN_KIND_SERVER"}[$__rate_interval])) * 0)'
                    ' / sum by (service_name) (rate(traces_span_metrics_calls_total{service_name=~"$service", '
                    'span_kind="SPAN_KIND_SERVER"}[$__rate_interval]))',
                    "{{service_name}}",
                ),
            )
        )
        .with_row(db.Row("Saturation and dependencies"))
        .with_panel(
            _ts(
                "In-flight requests",
                "Requests being served right now.",
                "short",
                prom(f"sum by (job) (http_server_active_requests{{{SERVICE_JOB}}})", "{{job}}"),
                w=8,
            )
        )
        .with_panel(
            _ts(
                "CPU",
                "CPU seconds per second used by the service's processes.",
                "short",
                prom(
                    f"sum by (job) (rate(process_cpu_time_seconds_total{{{SERVICE_JOB}}}[$__rate_interval]))", "{{job}}"
                ),
                w=8,
            )
        )
        .with_panel(
            _ts(
                "Memory",
                "Resident memory of the service's processes.",
                "bytes",
                prom(f"sum by (job) (process_memory_usage_bytes{{{SERVICE_JOB}}})", "{{job}}"),
                w=8,
            )
        )
        .with_panel(
            _ts(
                "Outgoing call latency p95",
                "p95 duration of the service's HTTP calls, per called service (peer.service where the "
                "service's peer_service_mapping names it, else the called host).",
                "s",
                prom(
                    "histogram_quantile(0.95, sum by (job, peer, le) (label_replace(label_replace("
                    f"rate(http_client_request_duration_seconds_bucket{{{SERVICE_JOB}}}[$__rate_interval]), "
                    '"peer", "$1", "server_address", "(.+)"), "peer", "$1", "peer_service", "(.+)")))',
                    "{{job}} → {{peer}}",
                    exemplar=True,
                ),
            )
        )
        .with_panel(
            _ts(
                "Telemetry dropped in the SDK",
                "Items the meshwatch library dropped before export, per service, signal and reason; "
                "one line at 0 while nothing is dropped.",
                "short",
                prom(
                    "sum by (job, signal, reason) "
                    f"(rate(meshwatch_sdk_dropped_total{{{SERVICE_JOB}}}[$__rate_interval])) > 0"
                    " or on() vector(0)",
                    "{{job}} {{signal}} {{reason}}",
                ),
            )
        )
    )
