"""meshwatch's fixed Prometheus rules: RED per service, traffic, the telemetry pipeline, the watchdog.

Every metric and label used here is from docs/telemetry-contract.md. Rules are plain data
(``Alert``, ``Record``) rendered to the Prometheus rule-file format, so tests can walk them
(every alert has a runbook and a promtool test) and the generator has one output path.

Identity: every per-service rule carries a ``service`` label, the OpenTelemetry
``service.name``: taken from ``job`` (``service.namespace/service.name`` or ``service.name``)
for the instrumentation's and the collector's metrics, and from ``service_name`` for the
spanmetrics series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_RUNBOOK_BASE_URL",
    "Alert",
    "Params",
    "Record",
    "RuleGroup",
    "meta_groups",
    "pipeline_groups",
    "red_groups",
    "service_from_job",
    "service_from_service_name",
]


#: Where ``runbook_url`` points by default: the runbooks' folder, relative to the repository root.
#: A path nobody can click from a pager, so deployments set their own (``runbook_base_url``).
DEFAULT_RUNBOOK_BASE_URL = "docs/runbooks/"


@dataclass(frozen=True)
class Params:
    """Knobs of the generated rules; the defaults are the production values.

    ``for_override`` replaces every alert's ``for`` and ``red_window`` the RED rate window,
    so a live test can see an alert fire and resolve in seconds rather than minutes.
    ``runbook_base_url`` is the prefix of every ``runbook_url`` (``<prefix><AlertName>.md``):
    None takes the SLO spec's ``runbook_base_url``, else the repository-relative default.
    """

    red_window: str = "5m"
    for_override: str | None = None
    runbook_base_url: str | None = None

    def for_(self, production: str) -> str:
        return self.for_override if self.for_override is not None else production

    def runbook_url(self, name: str) -> str:
        return f"{self.runbook_base_url or DEFAULT_RUNBOOK_BASE_URL}{name}.md"


@dataclass(frozen=True)
class Record:
    record: str
    expr: str
    labels: dict[str, str] = field(default_factory=dict)

    def render(self, params: Params) -> dict[str, Any]:
        out: dict[str, Any] = {"record": self.record, "expr": self.expr}
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


@dataclass(frozen=True)
class Alert:
    """One alerting rule. ``runbook`` is the file stem in docs/runbooks/ (default: the alert name)."""

    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)
    runbook: str = ""

    def render(self, params: Params) -> dict[str, Any]:
        out: dict[str, Any] = {"alert": self.alert, "expr": self.expr}
        duration = params.for_(self.for_)
        if duration and duration != "0s":
            out["for"] = duration
        out["labels"] = {"severity": self.severity, **self.labels}
        out["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": params.runbook_url(self.runbook or self.alert),
        }
        return out


@dataclass(frozen=True)
class RuleGroup:
    name: str
    rules: list[Record | Alert]

    def render(self, params: Params) -> dict[str, Any]:
        return {"name": self.name, "rules": [rule.render(params) for rule in self.rules]}


def service_from_job(expr: str) -> str:
    """Add ``service`` = ``job`` without its ``service.namespace/`` prefix."""
    return f'label_replace({expr}, "service", "$1", "job", "(?:.*/)?(.+)")'


def service_from_service_name(expr: str) -> str:
    """Add ``service`` = the spanmetrics ``service_name`` label."""
    return f'label_replace({expr}, "service", "$1", "service_name", "(.+)")'


# Alertmanager template snippets used in annotations.
SVC = "{{ $labels.service }}"
JOB = "{{ $labels.job }}"
PCT = "{{ $value | humanizePercentage }}"
DUR = "{{ $value | humanizeDuration }}"

# --- RED ---------------------------------------------------------------------------------------

HTTP_COUNT = "http_server_request_duration_seconds_count"
HTTP_BUCKET = "http_server_request_duration_seconds_bucket"
SPAN_CALLS = "traces_span_metrics_calls_total"
SPAN_BUCKET = "traces_span_metrics_duration_seconds_bucket"
SERVER_SPANS = 'span_kind="SPAN_KIND_SERVER"'

#: Thresholds of the RED alerts: (critical, warning) error ratios and p95 latencies (seconds).
ERROR_RATIO = (0.05, 0.01)
P95_LATENCY = (2.5, 1.0)


def _red_source(kind: str, w: str) -> dict[str, str]:
    """The per-(job, service) PromQL of one RED source: requests, errors, a bucket rate."""
    if kind == "http":
        return {
            "requests": f"sum by (job, service) ({service_from_job(f'rate({HTTP_COUNT}[{w}])')})",
            "errors": service_from_job(f'rate({HTTP_COUNT}{{http_response_status_code=~"5.."}}[{w}])'),
            "buckets": f"sum by (job, service, le) ({service_from_job(f'rate({HTTP_BUCKET}[{w}])')})",
        }
    return {
        "requests": (
            f"sum by (job, service) ({service_from_service_name(f'rate({SPAN_CALLS}{{{SERVER_SPANS}}}[{w}])')})"
        ),
        "errors": service_from_service_name(
            f'rate({SPAN_CALLS}{{{SERVER_SPANS}, status_code="STATUS_CODE_ERROR"}}[{w}])'
        ),
        "buckets": (
            f"sum by (job, service, le) ({service_from_service_name(f'rate({SPAN_BUCKET}{{{SERVER_SPANS}}}[{w}])')})"
        ),
    }


def _red_group(kind: str, params: Params) -> RuleGroup:
    w = params.red_window
    src = _red_source(kind, w)
    metric = "http_server" if kind == "http" else "span_server"
    duration = "http_server_request_duration_seconds" if kind == "http" else "traces_span_metrics_duration_seconds"
    what = "HTTP requests (instrumentation metrics)" if kind == "http" else "server spans (collector spanmetrics)"
    requests = f"job_service:{metric}_requests:rate{w}"
    errors = f"job_service:{metric}_errors:rate{w}"
    ratio = f"job_service:{metric}_error_ratio:rate{w}"
    p95 = f"job_service:{duration}:p95_rate{w}"
    records: list[Record | Alert] = [
        Record(requests, src["requests"]),
        # `or … * 0`: a service without a single error has an error rate of 0, not no data.
        Record(errors, f"sum by (job, service) ({src['errors']})\nor\n{requests} * 0"),
        Record(ratio, f"{errors}\n/\n{requests}"),
        Record(f"job_service:{duration}:p50_rate{w}", f"histogram_quantile(0.5, {src['buckets']})"),
        Record(p95, f"histogram_quantile(0.95, {src['buckets']})"),
        Record(f"job_service:{duration}:p99_rate{w}", f"histogram_quantile(0.99, {src['buckets']})"),
    ]
    name = "HTTP" if kind == "http" else "Span"
    short = "HTTP requests" if kind == "http" else "server spans"
    err_alert = f"Meshwatch{name}ErrorRateHigh"
    lat_alert = f"Meshwatch{name}LatencyHigh"
    for severity, threshold, duration in (
        ("critical", ERROR_RATIO[0], "5m"),
        ("warning", ERROR_RATIO[1], "15m"),
    ):
        records.append(
            Alert(
                err_alert,
                f"{ratio} > {threshold:g}",
                duration,
                severity,
                summary=f"{SVC} fails more than {threshold:.0%} of its {short}",
                description=(
                    f"{SVC} (job {JOB}) failed {PCT} "
                    f"of its {what} over the last {w}; the {severity} threshold is {threshold:.0%}."
                ),
            )
        )
    for severity, threshold, duration in (
        ("critical", P95_LATENCY[0], "10m"),
        ("warning", P95_LATENCY[1], "15m"),
    ):
        records.append(
            Alert(
                lat_alert,
                f"{p95} > {threshold:g}",
                duration,
                severity,
                summary=f"{SVC} p95 latency is above {threshold:g}s",
                description=(
                    f"The 95th percentile duration of {SVC}'s {what} is "
                    f"{DUR} over the last {w}; the {severity} threshold is {threshold:g}s."
                ),
            )
        )
    return RuleGroup(f"meshwatch-red-{kind}", records)


def _traffic_group(params: Params) -> RuleGroup:
    w = params.red_window
    return RuleGroup(
        "meshwatch-traffic",
        [
            Alert(
                "MeshwatchServiceNoTraffic",
                # Served requests within the last hour, none in the last window (or its series vanished).
                f"sum by (job, service) ({service_from_job(f'increase({HTTP_COUNT}[1h])')}) > 0\n"
                f"unless\n"
                f"sum by (job, service) ({service_from_job(f'rate({HTTP_COUNT}[{w}])')}) > 0",
                "10m",
                "warning",
                summary="{{ $labels.service }} stopped serving requests",
                description=(
                    f"{SVC} (job {JOB}) served HTTP requests within the last hour "
                    f"but none in the last {w}: it is down, unreachable or no longer sending telemetry."
                ),
            ),
            Alert(
                "MeshwatchTargetDown",
                service_from_job("up == 0"),
                "2m",
                "critical",
                summary="Prometheus cannot scrape {{ $labels.job }} on {{ $labels.instance }}",
                description=(
                    "The scrape of {{ $labels.instance }} (job {{ $labels.job }}) has failed for 2 minutes: "
                    "the process is down or its metrics port is unreachable, so its metrics and alerts are blind."
                ),
            ),
        ],
    )


def red_groups(params: Params) -> list[RuleGroup]:
    """RED from the instrumentation's HTTP metrics and from spanmetrics, plus traffic/target checks."""
    return [_red_group("http", params), _red_group("span", params), _traffic_group(params)]


# --- Telemetry pipeline (collector self-telemetry) ---------------------------------------------

QUEUE_FULL = (0.95, 0.8)
QUEUE_AGE_SECONDS = 120
EXPORT_FAILURE_RATIO = 0.1


def pipeline_groups(params: Params) -> list[RuleGroup]:
    """Alerts on the collector's own metrics: refusals, drops, queues, exports, backends, SDK drops."""
    by_exporter = "job, service, exporter, signal"
    failed = f"sum by ({by_exporter}) ({service_from_job('rate(meshwatch_exporter_failed_items_total[5m])')})"
    sent = f"sum by ({by_exporter}) ({service_from_job('rate(meshwatch_exporter_sent_items_total[5m])')})"
    # Fill ratio of the durable queue: the larger of items and bytes; a 0 capacity means "no limit".
    fill = (
        "max by (job, exporter, signal) (\n"
        '  label_replace(meshwatch_queue_size_items / (meshwatch_queue_capacity_items > 0), "unit", "items", "", "")\n'
        "  or\n"
        '  label_replace(meshwatch_queue_size_bytes / (meshwatch_queue_capacity_bytes > 0), "unit", "bytes", "", "")\n'
        ")"
    )
    fill = service_from_job(fill)
    alerts: list[Record | Alert] = [
        Record("job_exporter:meshwatch_queue_fill:ratio", fill),
        Alert(
            "MeshwatchCollectorRefusingData",
            f"sum by (job, service, receiver, signal, reason) "
            f"({service_from_job('rate(meshwatch_receiver_refused_items_total[5m])')}) > 0",
            "5m",
            "warning",
            summary="The collector refuses {{ $labels.signal }} on {{ $labels.receiver }} ({{ $labels.reason }})",
            description=(
                "Receiver {{ $labels.receiver }} has refused {{ $value | humanize }} {{ $labels.signal }} items/s "
                "for 5 minutes with reason {{ $labels.reason }}; senders retry (queue_full, memory_limit) or lose "
                "(malformed, too_large) that data."
            ),
        ),
        Alert(
            "MeshwatchCollectorDroppingData",
            f"sum by ({by_exporter}, reason) "
            f"({service_from_job('increase(meshwatch_exporter_dropped_items_total[5m])')}) > 0",
            "1m",
            "critical",
            summary="The collector drops {{ $labels.signal }} for {{ $labels.exporter }} ({{ $labels.reason }})",
            description=(
                "Exporter {{ $labels.exporter }} dropped {{ $value | humanize }} {{ $labels.signal }} items in the "
                "last 5 minutes with reason {{ $labels.reason }}: that telemetry will never reach its backend."
            ),
        ),
    ]
    for severity, threshold, duration in (("critical", QUEUE_FULL[0], "2m"), ("warning", QUEUE_FULL[1], "5m")):
        alerts.append(
            Alert(
                "MeshwatchExporterQueueNearlyFull",
                f"job_exporter:meshwatch_queue_fill:ratio > {threshold:g}",
                duration,
                severity,
                summary="The {{ $labels.exporter }} queue is {{ $value | humanizePercentage }} full",
                description=(
                    "The durable queue of exporter {{ $labels.exporter }} ({{ $labels.signal }}) is "
                    f"{PCT} full (threshold {threshold:.0%}); when it is full the "
                    "collector refuses new data with queue_full."
                ),
            )
        )
    alerts += [
        Alert(
            "MeshwatchExporterQueueStalled",
            service_from_job(
                f"meshwatch_queue_oldest_item_age_seconds > {QUEUE_AGE_SECONDS}\n"
                f"and\n"
                f"deriv(meshwatch_queue_oldest_item_age_seconds[5m]) > 0"
            ),
            "5m",
            "warning",
            summary="The {{ $labels.exporter }} queue's oldest item is {{ $value | humanizeDuration }} old and ageing",
            description=(
                "The oldest unsent {{ $labels.signal }} batch of exporter {{ $labels.exporter }} is "
                f"{DUR} old (threshold {QUEUE_AGE_SECONDS}s) and still growing: "
                "the exporter is not keeping up or not sending at all."
            ),
        ),
        Alert(
            "MeshwatchExporterFailing",
            f"{failed}\n/\n({failed} + ({sent} or {failed} * 0))\n> {EXPORT_FAILURE_RATIO:g}",
            "10m",
            "warning",
            summary="{{ $value | humanizePercentage }} of {{ $labels.exporter }} export attempts fail",
            description=(
                "Exporter {{ $labels.exporter }} ({{ $labels.signal }}) failed to send "
                "{{ $value | humanizePercentage }} of the items it tried over 5 minutes "
                f"(threshold {EXPORT_FAILURE_RATIO:.0%}); they stay queued and are retried."
            ),
        ),
        Alert(
            "MeshwatchBackendUnreachable",
            service_from_job("meshwatch_exporter_backend_up == 0"),
            "2m",
            "critical",
            summary="The collector cannot reach the backend of {{ $labels.exporter }}",
            description=(
                "Exporter {{ $labels.exporter }} ({{ $labels.signal }}) has not reached its backend for 2 minutes; "
                "{{ $labels.signal }} pile up in its durable queue until the backend is back."
            ),
        ),
        Alert(
            "MeshwatchSDKDroppingTelemetry",
            f"sum by (job, service, signal, reason) ({service_from_job('rate(meshwatch_sdk_dropped_total[5m])')}) > 0",
            "10m",
            "warning",
            summary="{{ $labels.service }} drops {{ $labels.signal }} before they leave the process",
            description=(
                "The meshwatch library in {{ $labels.service }} drops {{ $value | humanize }} {{ $labels.signal }} "
                "items/s ({{ $labels.reason }}) and has for 10 minutes: that telemetry never reaches the collector."
            ),
        ),
    ]
    return [RuleGroup("meshwatch-pipeline", alerts)]


def meta_groups(params: Params) -> list[RuleGroup]:
    """The dead man's switch: always firing, so its absence at the receiver means alerting is broken."""
    return [
        RuleGroup(
            "meshwatch-meta",
            [
                Alert(
                    "Watchdog",
                    "vector(1)",
                    "",
                    "none",
                    summary="Alerting pipeline heartbeat (always firing)",
                    description=(
                        "This alert always fires so that the heartbeat receiver can tell that Prometheus "
                        "evaluates rules and Alertmanager delivers them; it going silent is the alarm."
                    ),
                )
            ],
        )
    ]
