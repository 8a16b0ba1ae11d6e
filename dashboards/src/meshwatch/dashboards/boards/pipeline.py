"""Collector and pipeline health, from the collector's own meshwatch_* metrics."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.models.common import BigValueTextMode

from .._sdk import PROM, prom, prom_variable
from .common import frame, thresholds

INST = 'instance=~"$instance"'


def _ts(title: str, description: str, unit: str, *targets: object, w: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).datasource(PROM).unit(unit).span(w).height(8)
    for target in targets:
        panel = panel.with_target(target)  # type: ignore[arg-type]
    return panel


def _rate(metric: str, by: str, *, zero: bool = False) -> str:
    expr = f"sum by ({by}) (rate({metric}{{{INST}}}[$__rate_interval]))"
    return f"{expr} or on() vector(0)" if zero else expr


def _send_quantile(q: float) -> str:
    bucket = f"meshwatch_exporter_send_duration_seconds_bucket{{{INST}}}"
    return f"histogram_quantile({q}, sum by (exporter, le) (rate({bucket}[$__rate_interval])))"


def build() -> db.Dashboard:
    return (
        frame(
            "pipeline-health",
            "Collector and pipeline health",
            "The meshwatch collector's self-telemetry: what it accepted, refused, sent, failed and dropped, "
            "per signal and component; its durable queues; its exports and backends.",
        )
        .with_variable(prom_variable("instance", "Collector", "label_values(meshwatch_collector_info, instance)"))
        .with_row(db.Row("Flow"))
        .with_panel(
            stat.Panel()
            .title("Collector version")
            .description("Each collector instance and the version it runs (meshwatch_collector_info).")
            .datasource(PROM)
            .text_mode(BigValueTextMode.NAME)
            .thresholds(thresholds("text"))  # a name, neither good nor bad
            .span(6)
            .height(4)
            .with_target(prom(f"meshwatch_collector_info{{{INST}}}", "{{instance}} {{version}}", instant=True))
        )
        .with_panel(
            stat.Panel()
            .title("Backends reachable")
            .description("Exporters whose last attempt reached their backend, of all exporters.")
            .datasource(PROM)
            .span(6)
            .height(4)
            .with_target(
                prom(
                    f"sum(meshwatch_exporter_backend_up{{{INST}}}) / count(meshwatch_exporter_backend_up{{{INST}}})",
                    instant=True,
                )
            )
            .unit("percentunit")
            .thresholds(thresholds("red", (1, "green")))  # anything short of all is a backend down
        )
        .with_panel(
            stat.Panel()
            .title("Items dropped (time range)")
            .description("Items that will never be delivered, over the dashboard's time range.")
            .datasource(PROM)
            .thresholds(thresholds("green", (1, "red")))
            .span(6)
            .height(4)
            .with_target(
                prom(
                    f"sum(increase(meshwatch_exporter_dropped_items_total{{{INST}}}[$__range])) or on() vector(0)",
                    instant=True,
                )
            )
        )
        .with_panel(
            stat.Panel()
            .title("Items refused (time range)")
            .description("Items pushed back to senders (they retry), over the dashboard's time range.")
            .datasource(PROM)
            .thresholds(thresholds("green", (1, "orange")))
            .span(6)
            .height(4)
            .with_target(
                prom(
                    f"sum(increase(meshwatch_receiver_refused_items_total{{{INST}}}[$__range])) or on() vector(0)",
                    instant=True,
                )
            )
        )
        .with_panel(
            _ts(
                "Accepted items/s",
                "Acknowledged to senders (durably queued), per receiver, transport and signal.",
                "short",
                prom(
                    _rate("meshwatch_receiver_accepted_items_total", "receiver, transport, signal"),
                    "{{receiver}}/{{transport}} {{signal}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Refused items/s by reason",
                "Answered with an error: back-pressure (queue_full, memory_limit) or bad input.",
                "short",
                prom(
                    _rate("meshwatch_receiver_refused_items_total", "receiver, signal, reason", zero=True),
                    "{{receiver}} {{signal}} {{reason}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Sent items/s",
                "Accepted by the backend, per exporter and signal.",
                "short",
                prom(_rate("meshwatch_exporter_sent_items_total", "exporter, signal"), "{{exporter}} {{signal}}"),
            )
        )
        .with_panel(
            _ts(
                "Failed and dropped items/s",
                "Failed attempts (retried) and dropped items (lost), per exporter and reason.",
                "short",
                prom(
                    _rate("meshwatch_exporter_failed_items_total", "exporter, signal, reason", zero=True),
                    "failed {{exporter}} {{signal}} {{reason}}",
                    ref="A",
                ),
                prom(
                    _rate("meshwatch_exporter_dropped_items_total", "exporter, signal, reason", zero=True),
                    "dropped {{exporter}} {{signal}} {{reason}}",
                    ref="B",
                ),
            )
        )
        .with_panel(
            _ts(
                "Filtered items/s",
                "Removed on purpose by processors (sampling, filters): not a loss.",
                "short",
                prom(
                    _rate("meshwatch_processor_filtered_items_total", "processor, signal, reason", zero=True),
                    "{{processor}} {{signal}} {{reason}}",
                ),
            )
        )
        .with_row(db.Row("Queues and exports"))
        .with_panel(
            _ts(
                "Queue fill",
                "Items (or bytes) waiting in each exporter's durable queue, as a share of its capacity.",
                "percentunit",
                prom(
                    f"max by (exporter, signal) (meshwatch_queue_size_items{{{INST}}}"
                    f" / (meshwatch_queue_capacity_items{{{INST}}} > 0))"
                    f" or max by (exporter, signal) (meshwatch_queue_size_bytes{{{INST}}}"
                    f" / (meshwatch_queue_capacity_bytes{{{INST}}} > 0))",
                    "{{exporter}} {{signal}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Oldest queued item age",
                "Age of the oldest unsent batch per exporter (0 when the queue is empty).",
                "s",
                prom(
                    f"max by (exporter, signal) (meshwatch_queue_oldest_item_age_seconds{{{INST}}})",
                    "{{exporter}} {{signal}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Export latency p50 / p95",
                "Duration of one export call, success or not.",
                "s",
                prom(
                    _send_quantile(0.5),
                    "{{exporter}} p50",
                    ref="A",
                ),
                prom(
                    _send_quantile(0.95),
                    "{{exporter}} p95",
                    ref="B",
                ),
            )
        )
        .with_panel(
            _ts(
                "Backend up",
                "1 when the exporter's last attempt reached its backend.",
                "short",
                prom(f"min by (exporter, signal) (meshwatch_exporter_backend_up{{{INST}}})", "{{exporter}} {{signal}}"),
            )
        )
        .with_row(db.Row("Collector process"))
        .with_panel(
            _ts(
                "Collector CPU",
                "CPU seconds per second of the collector process.",
                "short",
                prom(
                    f'rate(process_cpu_seconds_total{{job="meshwatch-collector", {INST}}}[$__rate_interval])',
                    "{{instance}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Collector memory",
                "Resident memory against the memory limiter's limit.",
                "bytes",
                prom(
                    f'process_resident_memory_bytes{{job="meshwatch-collector", {INST}}}',
                    "{{instance}} resident",
                    ref="A",
                ),
                prom(f"meshwatch_collector_memory_limit_bytes{{{INST}}}", "{{instance}} limit", ref="B"),
            )
        )
    )
