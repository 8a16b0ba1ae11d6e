"""Logs from Elasticsearch: volume by level and service, the latest errors, links from trace.id to Jaeger."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import elasticsearch as es
from grafana_foundation_sdk.builders import logs, table, timeseries
from grafana_foundation_sdk.builders.common import StackingConfig
from grafana_foundation_sdk.models.common import GraphDrawStyle, LogsSortOrder, StackingMode
from grafana_foundation_sdk.models.dashboard import DynamicConfigValue, VariableOption, VariableRefresh

from .._sdk import ES, es_count_by, es_logs, organize, trace_link
from .common import frame

SELECTED = "service.name:$service AND log.level:$level"
ERRORS = "service.name:$service AND log.level:(error OR fatal)"


def _service_variable() -> db.QueryVariable:
    return (
        db.QueryVariable("service")
        .label("Service")
        .datasource(ES)
        .query('{"find": "terms", "field": "service.name"}')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value("*")
        .current(VariableOption(text="All", value="$__all", selected=True))
    )


def _level_variable() -> db.CustomVariable:
    return (
        db.CustomVariable("level")
        .label("Level")
        .values("debug,info,warn,error,fatal")
        .multi(True)
        .include_all(True)
        .all_value("*")
        .current(VariableOption(text="All", value="$__all", selected=True))
    )


#: Each level in the colour a reader expects of it (the volume by level panel).
LEVEL_COLORS = {"debug": "blue", "info": "green", "warn": "orange", "error": "red", "fatal": "dark-red"}


def _volume(title: str, field_name: str) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(f"Log records per interval by {field_name}.")
        .datasource(ES)
        .unit("short")
        .draw_style(GraphDrawStyle.BARS)
        .fill_opacity(80)
        .stacking(StackingConfig().mode(StackingMode.NORMAL))
        .span(12)
        .height(8)
        .with_target(es_count_by(SELECTED, field_name))
    )
    if field_name == "log.level":
        for level, color in LEVEL_COLORS.items():
            panel = panel.override_by_name(
                level, [DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color})]
            )
    return panel


def build() -> db.Dashboard:
    return (
        frame(
            "logs",
            "Logs",
            "Logs from Elasticsearch (meshwatch-logs-*): volume by level and service, the latest errors; "
            "a record's trace.id opens its trace in Jaeger.",
        )
        .with_variable(_service_variable())
        .with_variable(_level_variable())
        .with_panel(_volume("Log volume by level", "log.level"))
        .with_panel(_volume("Log volume by service", "service.name"))
        .with_panel(
            table.Panel()
            .title("Latest error logs")
            .description("The newest error and fatal records; click a trace.id to open the trace in Jaeger.")
            .datasource(ES)
            .span(24)
            .height(10)
            .with_target(
                es.Dataquery()
                .ref_id("A")
                .datasource(ES)
                .query(ERRORS)
                .time_field("@timestamp")
                .metrics([es.RawData().id("1").settings(es.ElasticsearchRawDataSettings().size("100"))])
                .bucket_aggs([])
            )
            .with_transformation(
                organize(exclude=["_id", "_index", "_type", "_source", "highlight", "sort", "attributes", "resource"])
            )
            .override_by_name(*trace_link("trace.id"))
        )
        .with_panel(
            logs.Panel()
            .title("Logs")
            .description("Records of the selected services and levels, newest first; expand one for its fields.")
            .datasource(ES)
            .span(24)
            .height(14)
            .show_time(True)
            .wrap_log_message(True)
            .enable_log_details(True)
            .sort_order(LogsSortOrder.DESCENDING)
            .with_target(es_logs(SELECTED, limit=200))
        )
    )
