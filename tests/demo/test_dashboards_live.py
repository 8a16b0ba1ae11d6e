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

import json
import re
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshwatch.dashboards.build import DASHBOARDS_DIR, load_committed
from meshwatch.dashboards.check import check_all
from meshwatch.dashboards.queries import Backends, QueryResult, TimeRange, run_dashboards
from meshwatch.demo import cli
from meshwatch.demo.config import SERVICES as DEMO_SERVICES
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


#: How a target says "0 when nothing happened": with it, "returns data" holds whatever the metric's name.
ZERO_FALLBACK = "or on() vector(0)"


def _vector_selectors(prometheus: Server, expr: str) -> list[str]:
    """Every series selector of a PromQL expression, as Prometheus' own parser reads it.

    Prometheus' ``/api/v1/parse_query`` gives the syntax tree (what its UI's "explain" view
    draws); each ``vectorSelector`` node, and each ``matrixSelector`` (the ``…[5m]`` of a
    ``rate()``, which carries its matchers itself), is written back as ``{__name__="…", label=~"…"}``.
    """
    tree = get_json(f"{prometheus.url}/api/v1/parse_query", query=expr)["data"]
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("vectorSelector", "matrixSelector") and "matchers" in node:
                matchers = ", ".join(f"{m['name']}{m['type']}{json.dumps(m['value'])}" for m in node["matchers"])
                found.append(f"{{{matchers}}}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(tree)
    return found


#: Counters with no series until their first event (as alerts/pint.hcl tells pint): a failed send's
#: ``reason`` is the backend's own error class, unknown before it fails; filtered items are counted
#: once a processor filters (the demo's collector config has none). For these the scraped target's
#: metadata (the family's HELP and TYPE, exposed from the start) stands in for the series: a
#: misspelt name has neither.
FIRST_EVENT_COUNTERS = {"meshwatch_exporter_failed_items_total", "meshwatch_processor_filtered_items_total"}


def _declared_by_a_target(prometheus: Server, metric: str) -> bool:
    """Whether a scraped target declares the family of ``metric`` (OpenMetrics names a counter without ``_total``)."""
    families = {metric, metric.removesuffix("_total")}
    return any(get_json(f"{prometheus.url}/api/v1/metadata", metric=family)["data"] for family in families)


def _zero_fallbacks_without_series(prometheus: Server, results: list[QueryResult], time_range: TimeRange) -> list[str]:
    """The targets ending in ``or on() vector(0)`` one of whose selectors matches no series in the range.

    Such a target "returns data" (the 0) even if its metric were misspelt or never emitted; what
    it stands for is that the series under it exist (a counter at 0 is a series).
    """
    missing = []
    for result in results:
        expr = result.query.target.get("expr", "")
        if not expr.rstrip().endswith(ZERO_FALLBACK):
            continue
        selectors = _vector_selectors(prometheus, expr)
        assert selectors, f"{result.query.name}: no series selector found in {expr}"
        for selector in selectors:
            series = get_json(
                f"{prometheus.url}/api/v1/series",
                **{"match[]": selector, "start": time_range.start, "end": time_range.end},
            )["data"]
            name = re.search(r'__name__="([^"]+)"', selector)
            if not series and not (
                name and name[1] in FIRST_EVENT_COUNTERS and _declared_by_a_target(prometheus, name[1])
            ):
                missing.append(f"{result.query.name}: no series {selector}")
    return missing


def _last_15m() -> TimeRange:
    return TimeRange(end=time.time(), seconds=900, rate_interval="1m")


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
        last[0] = run_dashboards(models, backends, variables=pins, time_range=_last_15m())
        return all(r.has_data for r in last[0])

    try:
        eventually(attempt, timeout=120, interval=3, what="every panel returning data")
    except AssertionError:
        empty = [r for r in last[0] if not r.has_data]
        message = f"{len(empty)} of {len(last[0])} queries return no data with {pins}:\n{_describe(empty)}"
        raise AssertionError(message) from None
    return last[0]


@pytest.fixture(scope="module")
def error_logs(platform: Platform, prometheus: Server, elasticsearch: Server) -> None:
    """A small fault, until its error logs are searchable: the "Latest error logs" panel lists them.

    Once for the module: the query runner's and the browser's checks read the same records.
    """
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


def test_every_panel_returns_data_on_the_running_demo(
    platform: Platform, prometheus: Server, elasticsearch: Server, jaeger: Server, error_logs: None
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

    # The environment variable offers the demo's environment (from the services' target_info).
    environments = get_json(
        f"{prometheus.url}/api/v1/label/deployment_environment_name/values", **{"match[]": "target_info"}
    )["data"]
    assert DEMO_ENVIRONMENT in environments

    backends = Backends(prometheus=prometheus.url, elasticsearch=elasticsearch.url, jaeger=jaeger.url)
    results = _all_have_data(backends)
    assert {r.query.dashboard for r in results} == {m["uid"] for m in MODELS.values()}
    # The targets that would "return data" anyway (… or on() vector(0)): their series exist.
    fallbacks = [r for r in results if r.query.target.get("expr", "").endswith(ZERO_FALLBACK)]
    assert len(fallbacks) == 7, [r.query.name for r in fallbacks]
    assert _zero_fallbacks_without_series(prometheus, results, _last_15m()) == []
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


def test_a_misspelt_metric_behind_vector_0_still_returns_data_but_fails_the_series_check(
    platform: Platform, prometheus: Server
) -> None:
    """Positive control of the check above: one metric misspelt in a copy of the pipeline dashboard."""
    right, wrong = "meshwatch_exporter_dropped_items_total", "meshwatch_exporter_droped_items_total"
    model = json.loads(json.dumps(MODELS["pipeline-health"]).replace(right, wrong))
    # And one of the counters checked by their metadata (no series until a send fails).
    failed, misspelt_failed = "meshwatch_exporter_failed_items_total", "meshwatch_exporter_faild_items_total"
    model = json.loads(json.dumps(model).replace(failed, misspelt_failed))
    time_range = _last_15m()
    results = run_dashboards(
        [model], Backends(prometheus=prometheus.url), variables={"environment": DEMO_ENVIRONMENT}, time_range=time_range
    )
    exprs = [r.query.target.get("expr", "") for r in results]
    misspelt = [r for r, expr in zip(results, exprs, strict=True) if wrong in expr or misspelt_failed in expr]
    assert len(misspelt) == 3, exprs
    assert all(r.has_data for r in misspelt), _describe(misspelt)  # the 0 hides the typo from "has data"
    missing = _zero_fallbacks_without_series(prometheus, results, time_range)
    assert len(missing) == 3 and all(wrong in m or misspelt_failed in m for m in missing), missing


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


# --- in Chromium: what a person sees on the console -------------------------------------------------

#: Each panel of the open dashboard: its title, the state the page gave it, and whether it drew
#: something (a chart with at least one point, a table row or a stat value) in the page as it is.
_PANELS_JS = """
return [...document.querySelectorAll('#dash-grid .panel')].map((p) => {
  const body = p.querySelector('.body');
  const plot = body._plot && body.contains(body._plot.root) ? body._plot : null;
  const drawn = plot ? plot.data.slice(1).some((s) => s.some((v) => v != null))
    : !!body.querySelector('table tbody tr, .stat .v');
  return {title: p.querySelector('h4').textContent, state: p.dataset.state || '', drawn: drawn,
          says: body.textContent.slice(0, 160)};
});
"""

#: The exemplar diamonds of one panel's chart: each one's trace and where it is on the plot.
_EXEMPLARS_JS = """
const panel = [...document.querySelectorAll('#dash-grid .panel')]
  .find((p) => p.querySelector('h4').textContent === arguments[0]);
const body = panel.querySelector('.body'), u = body._plot;
if (!u || !body.contains(u.root)) return null;  // not drawn now (a later round failed or had no data)
const box = u.over.getBoundingClientRect();
return {over: u.over, width: box.width, height: box.height,
        points: (body._exemplars || []).map((e) => ({trace: e.trace, t: e.t, v: e.v, x: u.valToPos(e.t, 'x'),
                                                     y: u.valToPos(e.v, 'y')}))};
"""

LATENCY_PANEL = "Latency p50 / p95 / p99"


def _draw_dashboard(driver: Any, console: str, name: str) -> list[dict[str, Any]]:
    """Open one dashboard over the last 15 minutes with the demo's environment chosen in its
    drop-down, as a person would; refresh until every panel drew data (or fail naming the empty)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from ._chromium import open_console, wait_for

    open_console(driver, f"{console}/#dashboards/{name}?range=15m")
    chooser = driver.find_elements(By.CSS_SELECTOR, '#dash-vars select[data-name="environment"]')
    if chooser and Select(chooser[0]).first_selected_option.get_attribute("value") != DEMO_ENVIRONMENT:
        Select(chooser[0]).select_by_value(DEMO_ENVIRONMENT)
    status = driver.find_element(By.ID, "dash-status")
    last: list[list[dict[str, Any]]] = [[]]

    def drawn() -> bool:
        driver.find_element(By.ID, "dash-reload").click()  # "running queries…" until it is done
        wait_for(lambda: "panels with data" in status.text, timeout=60, what=f"{name}'s queries")
        last[0] = driver.execute_script(_PANELS_JS)
        return bool(last[0]) and all(p["state"] == "data" and p["drawn"] for p in last[0])

    try:
        wait_for(drawn, timeout=90, interval=2, what=f"every panel of {name} drawn")
    except AssertionError:
        empty = [
            f"{p['title']!r} ({p['state']}: {p['says']!r})" for p in last[0] if p["state"] != "data" or not p["drawn"]
        ]
        raise AssertionError(
            f"{name} in Chromium: {len(empty)} of {len(last[0])} panels without data: {empty}"
        ) from None
    return last[0]


def test_every_dashboard_draws_in_chromium_and_an_exemplar_opens_its_trace(
    platform: Platform, jaeger: Server, error_logs: None, tmp_path: Path
) -> None:
    """The console on the live demo, in headless Chromium: each of the six dashboards draws every
    panel; on the service overview's latency chart a click on an exemplar diamond opens that
    request's trace as a waterfall."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from ._chromium import chromium, jaeger_trace, screenshot, wait_for

    console = platform.server("console").url
    with chromium() as driver:
        drawn = {}
        for name in sorted(MODELS, key=lambda n: n == "service-overview"):  # the overview last: its exemplars next
            drawn[name] = _draw_dashboard(driver, console, name)
        panels = sum(len([p for p in m["panels"] if p["type"] != "row"]) for m in MODELS.values())
        assert sum(len(p) for p in drawn.values()) >= panels  # rows' children included
        screenshot(driver, "console-demo-service-overview.png", tmp_path)

        # An exemplar of the latency chart whose trace Jaeger has, with no other trace's diamond within
        # 4 px (the page opens the one nearest the click; thousands share the plot, and the p50, p95
        # and p99 queries each return the same exemplars): a click on it opens it.
        def on_plot(shown: dict[str, Any]) -> list[dict[str, Any]]:
            return [
                p
                for p in shown["points"]
                if p["x"] is not None  # NaN: no position (a round whose latency lines are all empty)
                and p["y"] is not None
                and 4 <= p["x"] <= shown["width"] - 4
                and 4 <= p["y"] <= shown["height"] - 4
            ]

        def drawn_plot() -> dict[str, Any] | None:
            shown = driver.execute_script(_EXEMPLARS_JS, LATENCY_PANEL)
            if not shown or not on_plot(shown):  # redraw it: one more query round
                driver.find_element(By.ID, "dash-reload").click()
                status = driver.find_element(By.ID, "dash-status")
                wait_for(lambda: "panels with data" in status.text, timeout=60, what="service-overview's queries")
                return None
            return shown

        # Only the gateway's series and exemplars on the chart: the session's Prometheus also holds
        # other test packages' services (tests/console's scraped target repeats one exemplar every second).
        from selenium.webdriver.support.ui import Select

        service = Select(driver.find_element(By.CSS_SELECTOR, '#dash-vars select[data-name="service"]'))
        value = next(o.get_attribute("value") for o in service.options if o.text.rsplit("/", 1)[-1] == "gateway")
        service.select_by_value(value)
        status = driver.find_element(By.ID, "dash-status")
        driver.find_element(By.ID, "dash-reload").click()  # the charts again, for the gateway only
        wait_for(lambda: "panels with data" in status.text, timeout=60, what="service-overview for the gateway")
        plot = wait_for(drawn_plot, timeout=120, interval=1, what=f"the {LATENCY_PANEL!r} chart drawn")
        assert len({p["trace"] for p in plot["points"]}) > 1, "the gateway's own exemplars, not one repeated"
        inside = on_plot(plot)
        alone = [
            p
            for p in inside
            if not any(
                q["trace"] != p["trace"] and (q["x"] - p["x"]) ** 2 + (q["y"] - p["y"]) ** 2 < 16 for q in inside
            )
        ]

        def of_the_demo(trace_id: str) -> bool:
            """Jaeger has the trace (tail sampling kept it) and it is a demo request: the session's
            Prometheus also holds exemplars of earlier test packages' services (tests/console's)."""
            trace = jaeger_trace(jaeger.url, trace_id)
            return bool(trace) and bool({p["serviceName"] for p in trace["processes"].values()} & set(DEMO_SERVICES))

        # newest first, each trace asked once (a test target scraped all along repeats one exemplar)
        newest = list({p["trace"]: p for p in sorted(alone, key=lambda p: p["x"])}.values())[::-1]
        kept = next((p for p in newest[:300] if of_the_demo(p["trace"])), None)
        assert kept, (
            f"{len(plot['points'])} exemplars, {len(inside)} on the {plot['width']}×{plot['height']} plot, "
            f"{len(alone)} alone: none in Jaeger; e.g. {plot['points'][-3:]}"
        )
        target = kept

        def click_it() -> bool:
            # Positions read again just before the click: the chart may have been redrawn since
            # (a query round still under way), which replaces the element clicked.
            now = drawn_plot()
            # The same diamond (one trace can have several: each service's histogram has its exemplars).
            at = next(
                p for p in now["points"] if (p["trace"], p["t"], p["v"]) == (target["trace"], target["t"], target["v"])
            )
            ActionChains(driver).move_to_element_with_offset(
                now["over"], round(at["x"] - now["width"] / 2), round(at["y"] - now["height"] / 2)
            ).click().perform()
            opened = driver.execute_script("return location.hash")
            if opened.startswith("#traces/") and opened != f"#traces/{target['trace']}":
                driver.back()  # another diamond was nearer the pointer: back to the dashboard, try again
                return False
            return opened == f"#traces/{target['trace']}"

        wait_for(click_it, timeout=30, interval=1, what=f"a click on exemplar {target} to open its trace")
        rows = wait_for(
            lambda: driver.find_elements(By.CSS_SELECTOR, "#trace-view .span-row"),
            timeout=30,
            what="the exemplar's trace waterfall",
        )
        header = driver.find_element(By.CSS_SELECTOR, "#trace-view h3").text
        assert target["trace"] in header and any(service in header for service in DEMO_SERVICES), header
        assert len(rows) >= 2, header
        screenshot(driver, "console-demo-trace.png", tmp_path)
