"""Every panel of every committed dashboard shows data on the running demo: no empty panels.

Without a Grafana server (none runs on this machine) the query runner does what Grafana's
datasources would: each panel's PromQL to the real Prometheus, its Elasticsearch query to the
real Elasticsearch, its Jaeger search to the real Jaeger, with the environment set to the
demo's and the other variables at their defaults (and pinned to single services where an
on-call engineer would pin them). A
series that is NaN throughout does not count as data. The demo (tests/demo/conftest.py) runs
under load with the project's alert rules loaded (the SLO dashboard reads their recording
rules) and the collector's self-telemetry scraped as job ``meshwatch-collector``; a small
injected fault makes sure there are error logs to list.
"""

from __future__ import annotations

import time
import urllib.error
from typing import Any

import pytest
import yaml

from meshwatch.dashboards.build import DASHBOARDS_DIR, load_committed
from meshwatch.dashboards.check import check_all
from meshwatch.dashboards.queries import Backends, QueryResult, TimeRange, run_dashboards
from meshwatch.demo import cli
from meshwatch.demo.platform import Platform
from meshwatch.stack import Server
from meshwatch.stack.testing import eventually

from .conftest import get_json, post_json, promql

pytestmark = pytest.mark.e2e

MODELS = load_committed()
PROVISIONING = DASHBOARDS_DIR / "provisioning" / "datasources" / "meshwatch.yaml"
#: The SLO spec's services (alerts/slos.yaml): each gets its own SLO dashboard run.
SLO_SERVICES = ("gateway", "orders", "payments", "inventory")
FAULTY = "payments"
DEMO_ENVIRONMENT = "demo"  # MESHWATCH_ENVIRONMENT of the demo's services


def _uids_used(node: Any) -> set[str]:
    """Every datasource uid a dashboard or provisioning file points at: panels, targets, variables, links."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict) and value.get("uid"):
                found.add(value["uid"])
            elif key == "datasourceUid":
                found.add(value)
            else:
                found |= _uids_used(value)
    elif isinstance(node, list):
        for item in node:
            found |= _uids_used(item)
    return found


def test_every_datasource_uid_referenced_is_provisioned() -> None:
    provisioned = yaml.safe_load(PROVISIONING.read_text())["datasources"]
    uids = {d["uid"] for d in provisioned}
    for name, model in MODELS.items():
        missing = _uids_used(model) - uids
        assert not missing, f"dashboards/json/{name}.json uses datasource uids {sorted(missing)} not in {PROVISIONING}"
    # The links between datasources (exemplar → trace, trace → logs, log → trace) too.
    assert _uids_used(provisioned) <= uids
    assert check_all(MODELS, datasource_uids=uids) == []


def _error_logs_since(elasticsearch: Server, service: str, since: float) -> int:
    query = {
        "size": 0,
        "query": {
            "bool": {
                "filter": [
                    {"term": {"service.name": service}},
                    {"term": {"log.level": "error"}},
                    {"range": {"@timestamp": {"gte": int(since * 1000), "format": "epoch_millis"}}},
                ]
            }
        },
    }
    return int(post_json(f"{elasticsearch.url}/meshwatch-logs-*/_search", query)["hits"]["total"]["value"])


def _describe(results: list[QueryResult]) -> str:
    return "\n".join(
        f"  {r.query.name}: {r.error or f'no data ({r.nan_series} NaN-only series)'}"
        f"\n      {r.query.target.get('expr') or r.query.target.get('query') or r.query.target}"
        for r in results
    )


def _all_have_data(
    backends: Backends, models: dict[str, Any] = MODELS, variables: dict[str, str] | None = None
) -> list[QueryResult]:
    """Run the dashboards until every target returns data (the demo has just started); fail naming the empty.

    The environment is the demo's (``deployment.environment.name=demo``), as an SRE would pick it:
    the shared Prometheus may also hold other tests' services, with only some of the series.
    """
    pins = {"environment": DEMO_ENVIRONMENT, **(variables or {})}
    last: list[list[QueryResult]] = [[]]

    def attempt() -> bool:
        time_range = TimeRange(end=time.time(), seconds=900, rate_interval="1m")
        last[0] = run_dashboards(models, backends, variables=pins, time_range=time_range)
        return all(r.has_data for r in last[0])

    try:
        eventually(attempt, timeout=120, interval=3, what="every panel returning data")
    except AssertionError:
        empty = [r for r in last[0] if not r.has_data]
        message = f"{len(empty)} of {len(last[0])} queries return no data with {pins}:\n{_describe(empty)}"
        raise AssertionError(message) from None
    return last[0]


def test_every_panel_returns_data_on_the_running_demo(
    platform: Platform, prometheus: Server, elasticsearch: Server, jaeger: Server
) -> None:
    # The collector's self-telemetry, as the pipeline dashboard expects it.
    up = eventually(
        lambda: promql(prometheus, 'up{job="meshwatch-collector"} == 1'), timeout=60, what="collector scraped"
    )
    assert up[0]["metric"]["instance"].startswith("127.0.0.1:")
    assert promql(prometheus, 'meshwatch_collector_info{job="meshwatch-collector"}')
    # The project's rules are loaded: the SLO dashboard reads their recording rules.
    eventually(
        lambda: len(promql(prometheus, "meshwatch_slo:objective:ratio")) == 6, timeout=60, what="SLO recording rules"
    )

    # A small fault, until its error logs are searchable: the "Latest error logs" panel lists them.
    state = ["--state-dir", str(platform.stack.state_dir)]
    began = time.time() - 1
    assert cli.main([*state, "fault", FAULTY, "--error-rate", "0.2"]) == 0
    try:
        logs = lambda: _error_logs_since(elasticsearch, FAULTY, began)  # noqa: E731
        eventually(logs, timeout=90, what=f"error logs from {FAULTY}")
    except AssertionError as exc:
        dropped = 'sum by (reason) (meshwatch_exporter_dropped_items_total{exporter="elasticsearch"})'
        refused = promql(prometheus, dropped)
        raise AssertionError(f"{exc}; the collector's Elasticsearch exporter dropped: {refused}") from None
    finally:
        assert cli.main([*state, "fault", FAULTY, "--clear"]) == 0

    # The environment variable offers the demo's environment (from the services' target_info).
    environments = get_json(
        f"{prometheus.url}/api/v1/label/deployment_environment_name/values", **{"match[]": "target_info"}
    )["data"]
    assert DEMO_ENVIRONMENT in environments

    backends = Backends(prometheus=prometheus.url, elasticsearch=elasticsearch.url, jaeger=jaeger.url)
    results = _all_have_data(backends)
    assert {r.query.dashboard for r in results} == {m["uid"] for m in MODELS.values()}
    panels = [p for m in MODELS.values() for top in m["panels"] for p in [top, *top.get("panels", [])]]
    targets = sum(len(p.get("targets") or []) for p in panels if p["type"] != "row")
    assert len(results) == targets  # every target of the six dashboards, none skipped

    # The latency panel's exemplars: dots that open the request's trace. The demo's collector tail-samples
    # (errors, > 500 ms, 5 % of the rest; docs/sampling.md): the exemplar of a failed request (5xx, or a
    # declined payment, an error on the caller's span) always opens its trace; a fine one mostly does not.
    latency = next(r for r in results if r.query.panel_title == "Latency p50 / p95 / p99" and r.query.ref_id == "B")
    assert latency.exemplars, "no exemplars on the service overview's latency panel"
    now = time.time()
    exemplars = get_json(
        f"{prometheus.url}/api/v1/query_exemplars", query=latency.query.target["expr"], start=now - 300, end=now
    )["data"]
    failed = [
        e["labels"]["trace_id"]
        for series in exemplars
        if series["seriesLabels"].get("http_response_status_code", "").startswith("5")
        or series["seriesLabels"].get("http_response_status_code") == "402"
        for e in series["exemplars"]
        if e["timestamp"] < now - 15  # older than a decision_wait: decided
    ]
    assert failed, "no exemplar of a failed request on the latency panel"

    def in_jaeger(trace_id: str) -> bool:
        try:
            return bool(get_json(f"{jaeger.url}/api/traces/{trace_id}").get("data"))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise

    missing: list[str] = []

    def all_in_jaeger() -> bool:
        missing[:] = [t for t in failed[-10:] if not in_jaeger(t)]
        return not missing

    try:
        eventually(all_in_jaeger, timeout=30, what="every failed request's exemplar trace in Jaeger")
    except AssertionError:
        raise AssertionError(f"exemplar traces of failed requests not in Jaeger: {missing}") from None


def test_panels_pinned_to_one_service_return_data(platform: Platform, prometheus: Server, jaeger: Server) -> None:
    """What an on-call engineer opens from a page: the paged service's overview, endpoints and SLOs."""
    backends = Backends(prometheus=prometheus.url, jaeger=jaeger.url)
    per_service = {name: MODELS[name] for name in ("service-overview", "endpoint-detail")}
    _all_have_data(backends, models=per_service, variables={"service": FAULTY})
    for service in SLO_SERVICES:
        # Every SLO of the service, each with a number: a NaN SLI (0/0 before traffic) would blank it.
        _all_have_data(backends, models={"slo": MODELS["slo"]}, variables={"service": service})
    period = promql(prometheus, "meshwatch_slo:sli_error:ratio_period")
    assert {(r["metric"]["service"], r["metric"]["slo"]) for r in period if r["value"][1] != "NaN"} == {
        ("gateway", "availability"),
        ("gateway", "latency"),
        ("orders", "availability"),
        ("orders", "latency"),
        ("payments", "availability"),
        ("inventory", "availability"),
    }
