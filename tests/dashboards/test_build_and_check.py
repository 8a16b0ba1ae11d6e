"""The committed dashboards are the generator's output and pass the schema checks; broken ones do not."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshwatch.dashboards import build
from meshwatch.dashboards.check import check_all, check_dashboard, promql_metric_names, variable_names
from meshwatch.dashboards.cli import main
from meshwatch.dashboards.contract import contract_metrics, known_metrics
from meshwatch.dashboards.datasources import ELASTICSEARCH_UID, JAEGER_UID, PROMETHEUS_UID

ROOT = Path(__file__).resolve().parents[2]
MODELS = build.load_committed()


def test_committed_files_match_the_generator() -> None:
    files = build.render_all()
    assert len([f for f in files if f.startswith("json/")]) == 6
    assert build.stale(files) == [], "run `meshwatch-dashboards build` and commit the result"
    assert set(MODELS) == {
        "service-overview",
        "endpoint-detail",
        "service-dependencies",
        "logs",
        "pipeline-health",
        "slo",
    }


def test_build_check_detects_an_edited_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build.write(build.render_all(), tmp_path)
    assert main(["build", "--check", "--out", str(tmp_path)]) == 0
    path = tmp_path / "json" / "slo.json"
    path.write_text(path.read_text().replace("Error budget remaining", "Budget"))
    assert main(["build", "--check", "--out", str(tmp_path)]) == 1
    assert "json/slo.json" in capsys.readouterr().err


def test_committed_dashboards_pass_every_check() -> None:
    assert check_all(MODELS, known_metrics=known_metrics()) == []
    assert main(["check"]) == 0


def test_every_panel_uses_a_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/meshwatch.yaml").read_text())
    uids = {d["uid"] for d in provisioned["datasources"]}
    assert uids == {PROMETHEUS_UID, JAEGER_UID, ELASTICSEARCH_UID}
    used = {(p.get("datasource") or {}).get("uid") for m in MODELS.values() for p in m["panels"] if p["type"] != "row"}
    assert used == uids  # every datasource is used, and nothing else


def test_the_issue_s_panels_exist() -> None:
    def panels(name: str) -> dict[str, dict[str, Any]]:
        return {p["title"]: p for p in MODELS[name]["panels"]}

    overview = panels("service-overview")
    assert overview["Latency p50 / p95 / p99"]["targets"][0]["exemplar"] is True
    assert {v["name"] for v in MODELS["service-overview"]["templating"]["list"]} == {"environment", "service"}
    endpoints = panels("endpoint-detail")
    assert endpoints["Latency heatmap"]["type"] == "heatmap"
    assert {"Top slow routes (p95 over the time range)", "Top failing routes (5xx share over the time range)"} <= set(
        endpoints
    )
    graph = panels("service-dependencies")["Service graph"]
    assert graph["type"] == "nodeGraph"
    assert all("traces_service_graph_request_total" in t["expr"] for t in graph["targets"])
    logs = panels("logs")
    assert {"Log volume by level", "Log volume by service", "Latest error logs"} <= set(logs)
    link = logs["Latest error logs"]["fieldConfig"]["overrides"][0]
    assert link["matcher"]["options"] == "trace.id"
    assert link["properties"][0]["value"][0]["internal"]["datasourceUid"] == JAEGER_UID
    pipeline = " ".join(t["expr"] for p in MODELS["pipeline-health"]["panels"] for t in p.get("targets", []))
    for metric in (
        "accepted",
        "refused",
        "sent",
        "failed",
        "dropped",
        "queue_size",
        "oldest_item_age",
        "send_duration",
    ):
        assert metric in pipeline
    slo = " ".join(t["expr"] for p in MODELS["slo"]["panels"] for t in p.get("targets", []))
    assert "meshwatch_slo:error_budget_remaining:ratio" in slo and "meshwatch_slo:sli_error:ratio_rate1h" in slo


def test_datasource_links() -> None:
    provisioned = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/meshwatch.yaml").read_text())
    by_uid = {d["uid"]: d for d in provisioned["datasources"]}
    prom = by_uid[PROMETHEUS_UID]["jsonData"]["exemplarTraceIdDestinations"]
    assert prom == [{"name": "trace_id", "datasourceUid": JAEGER_UID}]
    jaeger = by_uid[JAEGER_UID]["jsonData"]["tracesToLogsV2"]
    assert jaeger["datasourceUid"] == ELASTICSEARCH_UID
    assert jaeger["query"] == 'trace.id:"$${__span.traceId}"'  # $$: Grafana expands $ in provisioning files
    es = by_uid[ELASTICSEARCH_UID]["jsonData"]
    assert es["index"] == "meshwatch-logs-*" and es["timeField"] == "@timestamp"
    assert es["dataLinks"] == [{"field": "trace.id", "url": "$${__value.raw}", "datasourceUid": JAEGER_UID}]
    provider = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/meshwatch.yaml").read_text())
    assert provider["providers"][0]["type"] == "file" and provider["providers"][0]["folderUid"] == "meshwatch"


def _broken(mutate: Any) -> list[str]:
    model = copy.deepcopy(MODELS["service-overview"])
    mutate(model)
    return check_dashboard(model, known_metrics=known_metrics())


def _panel(model: dict[str, Any], title: str) -> dict[str, Any]:
    return next(p for p in model["panels"] if p.get("title") == title)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: _panel(m, "Request rate")["datasource"].update(uid="prom-typo"), "'prom-typo' is not in the"),
        (
            lambda m: _panel(m, "Request rate")["targets"][0].update(expr='rate(x{job=~"$svc"}[5m])'),
            "uses $svc, which is not defined",
        ),
        (lambda m: _panel(m, "Error %").update(id=_panel(m, "Request rate")["id"]), "not unique"),
        (lambda m: _panel(m, "Error %")["gridPos"].update(x=0), "overlaps panel"),
        (lambda m: _panel(m, "Memory")["gridPos"].update(w=30), "24-column grid"),
        (
            lambda m: _panel(m, "Request rate")["targets"][0].update(expr="sum(rate(http_requests_total[5m]))"),
            "metric http_requests_total is not in the contract",
        ),
        (lambda m: _panel(m, "Latency p50 / p95 / p99")["targets"][1].update(refId="A"), "refIds"),
        (lambda m: m["templating"]["list"].reverse(), "uses $environment, which is not defined before it"),
    ],
)
def test_check_catches(mutate: Any, message: str) -> None:
    problems = _broken(mutate)
    assert any(message in p for p in problems), problems


def test_check_catches_a_stat_left_on_grafana_s_default_colours() -> None:
    model = copy.deepcopy(MODELS["pipeline-health"])
    del _panel(model, "Items dropped (time range)")["fieldConfig"]["defaults"]["thresholds"]
    problems = check_dashboard(model, known_metrics=known_metrics())
    assert any("'Items dropped (time range)': a stat panel needs its own thresholds" in p for p in problems), problems


def test_check_catches_unknown_log_field() -> None:
    model = copy.deepcopy(MODELS["logs"])
    model["panels"][0]["targets"][0]["query"] = "severity:error"
    assert any("field severity is not in the contract" in p for p in check_dashboard(model))


def test_duplicate_uid_across_dashboards() -> None:
    models = copy.deepcopy(MODELS)
    models["slo"]["uid"] = models["logs"]["uid"]
    assert any("used by more than one dashboard" in p for p in check_all(models))


def test_helpers() -> None:
    assert variable_names('rate(x{a=~"$a", b="${b:regex}"}[$__rate_interval]) [[c]] "$1"') == {
        "a",
        "b",
        "c",
        "__rate_interval",
    }
    expr = 'histogram_quantile(0.95, sum by (job, le) (rate(foo_bucket{job=~"x"}[5m]))) / on (job) bar'
    assert promql_metric_names(expr) == {"foo_bucket", "bar"}
    metrics = contract_metrics()
    assert {"http_server_request_duration_seconds_bucket", "meshwatch_queue_size_items", "target_info"} <= metrics
    # the committed JSON is plain JSON: it survives a round trip unchanged
    assert json.loads(json.dumps(MODELS["slo"])) == MODELS["slo"]
