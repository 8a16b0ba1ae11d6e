"""Small helpers over grafana-foundation-sdk so each dashboard module reads as a list of panels.

The SDK (Grafana's own code generator output, pinned in pyproject.toml) builds the dashboard
JSON model; these helpers fix the conventions every meshwatch panel shares: the datasource
uid, a ``refId`` per target, units, and the query types the SDK does not cover (Jaeger).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import elasticsearch as es
from grafana_foundation_sdk.builders import prometheus
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from .datasources import ELASTICSEARCH_UID, JAEGER_UID, PROMETHEUS_UID

__all__ = [
    "ES",
    "JAEGER",
    "PROM",
    "JaegerQuery",
    "es_count_by",
    "es_logs",
    "jaeger_search",
    "prom",
    "prom_variable",
    "refs",
]

PROM = DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)
JAEGER = DataSourceRef(type_val="jaeger", uid=JAEGER_UID)
ES = DataSourceRef(type_val="elasticsearch", uid=ELASTICSEARCH_UID)

#: What every per-service PromQL matcher looks like: `job` is `namespace/name` or `name`.
SERVICE_JOB = 'job=~"(.*/)?($service)"'


def refs(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def prom(
    expr: str,
    legend: str = "",
    *,
    ref: str = "A",
    instant: bool = False,
    table: bool = False,
    heatmap: bool = False,
    exemplar: bool = False,
) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(PROM)
    if legend:
        query = query.legend_format(legend)
    query = query.instant() if instant else query.range()
    if table:
        query = query.format(PromQueryFormat.TABLE)
    if heatmap:
        query = query.format(PromQueryFormat.HEATMAP)
    if exemplar:
        query = query.exemplar(True)
    return query


def prom_variable(
    name: str, label: str, query: str, *, regex: str = "", multi: bool = True, include_all: bool = True
) -> db.QueryVariable:
    """A Prometheus query variable; with "All" it matches everything (``.*``), even absent labels."""
    variable = (
        db.QueryVariable(name)
        .label(label)
        .datasource(PROM)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(include_all)
    )
    if include_all:
        variable = variable.all_value(".*").current(VariableOption(text="All", value="$__all", selected=True))
    if regex:
        variable = variable.regex(regex)
    return variable


def es_count_by(query: str, field_name: str, *, ref: str = "A", size: int = 10) -> es.Dataquery:
    """Document count per ``field_name`` value over time (terms, then date histogram)."""
    return (
        es.Dataquery()
        .ref_id(ref)
        .datasource(ES)
        .query(query)
        .time_field("@timestamp")
        .metrics([es.Count().id("1")])
        .bucket_aggs(
            [
                es.Terms()
                .id("2")
                .field(field_name)
                .settings(es.ElasticsearchTermsSettings().size(str(size)).order_by("_count").min_doc_count("1")),
                es.DateHistogram()
                .id("3")
                .field("@timestamp")
                .settings(es.ElasticsearchDateHistogramSettings().interval("auto").min_doc_count("0")),
            ]
        )
    )


def es_logs(query: str, *, ref: str = "A", limit: int = 100) -> es.Dataquery:
    """The newest ``limit`` log documents matching the Lucene ``query``."""
    return (
        es.Dataquery()
        .ref_id(ref)
        .datasource(ES)
        .query(query)
        .time_field("@timestamp")
        .metrics([es.Logs().id("1").settings(es.ElasticsearchLogsSettings().limit(str(limit)))])
        .bucket_aggs([])
    )


@dataclass
class JaegerQuery(cogvariants.Dataquery):
    """Grafana's Jaeger query model (not in the SDK): ``search`` or ``dependencyGraph``."""

    ref_id: str = "A"
    query_type: str = "search"
    service: str | None = None
    operation: str | None = None
    limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "datasource": {"type": "jaeger", "uid": JAEGER_UID},
            "queryType": self.query_type,
            "refId": self.ref_id,
        }
        if self.service is not None:
            out["service"] = self.service
        if self.operation is not None:
            out["operation"] = self.operation
        if self.limit is not None:
            out["limit"] = self.limit
        return {**out, **self.extra}


class _JaegerBuilder(cogbuilder.Builder[JaegerQuery]):
    def __init__(self, query: JaegerQuery) -> None:
        self._query = query

    def build(self) -> JaegerQuery:
        return self._query


def jaeger_search(service: str, *, limit: int = 20, ref: str = "A") -> _JaegerBuilder:
    return _JaegerBuilder(JaegerQuery(ref_id=ref, query_type="search", service=service, limit=limit))


def jaeger_dependencies(ref: str = "A") -> _JaegerBuilder:
    return _JaegerBuilder(JaegerQuery(ref_id=ref, query_type="dependencyGraph"))


def organize(rename: dict[str, str] | None = None, exclude: list[str] | None = None) -> DataTransformerConfig:
    return DataTransformerConfig(
        id_val="organize",
        options={"renameByName": rename or {}, "excludeByName": dict.fromkeys(exclude or [], True)},
    )


def trace_link(field_name: str) -> tuple[str, list[DynamicConfigValue]]:
    """An override giving ``field_name`` (a trace id) a link that opens the trace in Jaeger."""
    link = {
        "title": "Open trace in Jaeger",
        "url": "",
        "internal": {
            "datasourceUid": JAEGER_UID,
            "datasourceName": "Jaeger",
            "query": {"query": "${__value.raw}", "refId": "A"},
        },
    }
    return field_name, [DynamicConfigValue(id_val="links", value=[link])]
