"""Queries are extracted from every panel with variables filled in as Grafana would, and translated faithfully."""

from __future__ import annotations

import pytest

from meshwatch.dashboards import build
from meshwatch.dashboards.check import variable_names
from meshwatch.dashboards.queries import TimeRange, _Resolved, es_search_body, extract_queries, interpolate

MODELS = build.load_committed()
RANGE = TimeRange(end=1_700_000_000, seconds=3600, rate_interval="1m")


def test_every_target_of_every_panel_is_extracted_and_fully_interpolated() -> None:
    total_targets = sum(
        len(p.get("targets", [])) for m in MODELS.values() for p in m["panels"] if p.get("type") != "row"
    )
    queries = []
    for model in MODELS.values():
        variables = {
            v["name"]: _Resolved(v.get("allValue") or "orders", bool(v.get("allValue")), True)
            for v in model["templating"].get("list", [])
        }
        queries += extract_queries(model, variables, RANGE)
    assert len(queries) == total_targets
    assert {q.datasource for q in queries} == {"prometheus", "elasticsearch", "jaeger"}
    for q in queries:
        text = q.target.get("expr") or q.target.get("query") or q.target.get("service") or ""
        assert not variable_names(text), f"{q.name} still has variables: {text}"
    rate = next(q for q in queries if q.panel_title == "Request rate")
    assert rate.target["expr"] == (
        'sum by (job) (rate(http_server_request_duration_seconds_count{job=~"(.*/)?(.*)"}[1m]))'
    )


@pytest.mark.parametrize(
    ("value", "is_all", "datasource", "expected"),
    [
        (".*", True, "prometheus", 'job=~"(.*/)?(.*)"'),
        ("orders", False, "prometheus", 'job=~"(.*/)?(orders)"'),
        (["orders", "pay.ments"], False, "prometheus", 'job=~"(.*/)?((orders|pay\\\\.ments))"'),
    ],
)
def test_prometheus_interpolation(value: str | list[str], is_all: bool, datasource: str, expected: str) -> None:
    variables = {"service": _Resolved(value, is_all, True)}
    assert interpolate('job=~"(.*/)?($service)"', variables, {}, datasource) == expected


def test_elasticsearch_interpolation() -> None:
    one = {"service": _Resolved("dash-test", False, True), "level": _Resolved("*", True, True)}
    assert interpolate("service.name:$service AND log.level:$level", one, {}, "elasticsearch") == (
        "service.name:dash\\-test AND log.level:*"
    )
    many = {"service": _Resolved(["a", "b"], False, True)}
    assert interpolate("service.name:$service", many, {}, "elasticsearch") == 'service.name:("a" OR "b")'


def test_builtins_are_filled() -> None:
    assert interpolate("rate(x[$__rate_interval]) [$__range] ${__range_s}", {}, RANGE.builtins(), "prometheus") == (
        "rate(x[1m]) [3600s] 3600"
    )


def test_es_body_for_volume_panel() -> None:
    target = next(p for p in MODELS["logs"]["panels"] if p["title"] == "Log volume by level")["targets"][0]
    body = es_search_body({**target, "query": "service.name:* AND log.level:*"}, RANGE)
    assert body["size"] == 0
    assert body["query"]["bool"]["filter"][1] == {
        "query_string": {"query": "service.name:* AND log.level:*", "analyze_wildcard": True}
    }
    terms = body["aggs"]["2"]["terms"]
    assert terms["field"] == "log.level"
    histogram = body["aggs"]["2"]["aggs"]["3"]["date_histogram"]
    assert histogram["field"] == "@timestamp" and histogram["fixed_interval"] == "36s"


def test_es_body_for_logs_panel() -> None:
    target = next(p for p in MODELS["logs"]["panels"] if p["title"] == "Logs")["targets"][0]
    body = es_search_body(target, RANGE)
    assert body["size"] == 200
    assert body["sort"] == [{"@timestamp": {"order": "desc", "unmapped_type": "boolean"}}]


def test_es_body_rejects_what_it_cannot_translate() -> None:
    with pytest.raises(ValueError, match="unsupported Elasticsearch metric"):
        es_search_body({"metrics": [{"type": "avg", "field": "x"}]}, RANGE)
    with pytest.raises(ValueError, match="bucket aggregation 'histogram'"):
        es_search_body({"metrics": [{"type": "count"}], "bucketAggs": [{"id": "2", "type": "histogram"}]}, RANGE)
