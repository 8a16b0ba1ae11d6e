"""End to end: the demo platform on the real backends, under load, seen where a user looks.

The platform is the one of tests/demo/conftest.py (shared with the dashboard and
alerting tests here): the session's Jaeger, Prometheus, Alertmanager, Elasticsearch,
Redis and NATS, plus the meshwatch collector with its default config, the on-call
webhook, the six services and the load generator, all started by
``meshwatch.demo.platform`` as ``make demo`` does. Then: a checkout's trace crosses
the mesh and the broker in Jaeger; every service has RED metrics in Prometheus; an
injected fault shows as that service's error rate and as error logs, in
Elasticsearch, carrying the failing trace's id; clearing the fault brings the error
rate back down.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshwatch.demo import cli
from meshwatch.demo.platform import DEMO_SERVICES, PROCESSES, Platform, rss_by_server
from meshwatch.stack import Server
from meshwatch.stack.testing import eventually

from ._chromium import jaeger_trace
from .conftest import get_json as _get
from .conftest import post_json as _post
from .conftest import promql as _promql

pytestmark = pytest.mark.e2e

HTTP_SERVICES = ("gateway", "orders", "inventory", "payments", "fraud")
FAULTY = "payments"
ERROR_RATE = 0.5


def _field(doc: dict[str, Any], dotted: str) -> Any:
    """A field of an Elasticsearch document, whether stored as nested objects or a dotted key."""
    if dotted in doc:
        return doc[dotted]
    value: Any = doc
    for part in dotted.split("."):
        value = value[part]
    return value


def _trace_services(trace: dict[str, Any]) -> set[str]:
    return {trace["processes"][span["processID"]]["serviceName"] for span in trace["spans"]}


def _span_kind(span: dict[str, Any]) -> str:
    return next((t["value"] for t in span["tags"] if t["key"] == "span.kind"), "")


def test_a_checkout_trace_crosses_the_mesh_and_the_broker(platform: Platform, jaeger: Server) -> None:
    # Earlier tests on this shared platform inject faults into payments, which then fails some
    # charges before it calls fraud; so the trace looked for is one whose charge went through:
    # every hop present, fraud's spans included (they may also reach Jaeger a little later).
    hops = {"gateway", "orders", "payments", "fraud", "notifications"}
    seen: list[set[str]] = []

    def full_trace() -> dict[str, Any] | None:
        traces = _get(
            f"{jaeger.url}/api/traces", service="gateway", operation="POST /api/checkout", limit=50, lookback="1h"
        )["data"]
        seen[:] = [_trace_services(t) for t in traces[:5]]
        complete = [t for t in traces if hops <= _trace_services(t)]
        return complete[0] if complete else None

    try:
        trace = eventually(full_trace, timeout=90, what="a checkout trace reaching notifications and fraud")
    except AssertionError as missing:
        raise AssertionError(f"{missing}; the latest checkout traces had: {[sorted(s) for s in seen]}") from None
    services = _trace_services(trace)
    assert len(services) >= 4
    spans = {span["spanID"]: span for span in trace["spans"]}
    service_of = {sid: trace["processes"][s["processID"]]["serviceName"] for sid, s in spans.items()}

    def parent(span: dict[str, Any]) -> dict[str, Any] | None:
        refs = [r for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
        return spans.get(refs[0]["spanID"]) if refs else None

    # The asynchronous hop: a CONSUMER span in notifications whose parent is orders' PRODUCER span.
    consumers = [s for sid, s in spans.items() if service_of[sid] == "notifications" and _span_kind(s) == "consumer"]
    assert consumers, "no consumer span in notifications"
    producer = parent(consumers[0])
    assert producer is not None and _span_kind(producer) == "producer"
    assert service_of[producer["spanID"]] == "orders"
    assert producer["operationName"] == "publish orders.placed"
    # The Jaeger-format hop: fraud (which only reads uber-trace-id) joined payments' trace.
    fraud = [s for sid, s in spans.items() if service_of[sid] == "fraud"]
    assert fraud, f"fraud is missing from the trace: {sorted(services)}"
    caller = parent(fraud[0])
    assert caller is not None and service_of[caller["spanID"]] == "payments"


def test_every_service_has_red_metrics_in_prometheus(platform: Platform, prometheus: Server) -> None:
    def http_jobs() -> set[str]:
        query = "sum by (job) (rate(http_server_request_duration_seconds_count[1m])) > 0"
        return {r["metric"]["job"] for r in _promql(prometheus, query)}

    _wait_for_all(http_jobs, set(HTTP_SERVICES), what="HTTP RED metrics (jobs with requests in the last minute)")
    durations = _promql(prometheus, 'count by (job) (http_server_request_duration_seconds_bucket{le="0.1"})')
    assert set(HTTP_SERVICES) <= {r["metric"]["job"] for r in durations}

    # Every service, notifications (which only consumes messages) included, from spans.
    def span_services() -> set[str]:
        query = "sum by (service_name) (rate(traces_span_metrics_calls_total[1m])) > 0"
        return {r["metric"]["service_name"] for r in _promql(prometheus, query)}

    _wait_for_all(span_services, set(DEMO_SERVICES), what="spanmetrics for every service")
    # The business metric added by hand in orders.
    placed = _promql(prometheus, 'sum(demo_orders_placed_total{outcome="placed"})')
    assert placed and float(placed[0]["value"][1]) > 0


def _wait_for_all(get: Callable[[], set[str]], expected: set[str], *, what: str, timeout: float = 120) -> None:
    """Wait until ``get()`` covers ``expected``; on timeout say which are missing."""
    seen: list[set[str]] = [set()]

    def check() -> bool:
        seen[0] = get()
        return expected <= seen[0]

    try:
        eventually(check, timeout=timeout, interval=1, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: missing {sorted(expected - seen[0])}, found {sorted(seen[0])}") from None


def _error_ratio(prometheus: Server, window: str) -> float | None:
    selector = f'job="{FAULTY}"'
    query = (
        f'sum(rate(http_server_request_duration_seconds_count{{{selector},http_response_status_code=~"5.."}}[{window}]))'
        f" / sum(rate(http_server_request_duration_seconds_count{{{selector}}}[{window}]))"
    )
    result = _promql(prometheus, f"({query}) or vector(0)")
    return float(result[0]["value"][1]) if result else None


def _log_search_opens_a_failed_trace_in_chromium(console: str, jaeger: Server, shots: Path) -> None:
    """In headless Chromium, the console's logs view: service, level error and the text "injected
    fault" typed in, Search: the injected errors are listed; a record's trace link opens the
    waterfall of its request, with payments' failed span marked."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from ._chromium import chromium, open_console, screenshot, table_rows, wait_for

    with chromium() as driver:
        open_console(driver, f"{console}/#logs")
        driver.find_element(By.ID, "logs-service").send_keys(FAULTY)
        Select(driver.find_element(By.ID, "logs-level")).select_by_visible_text("error")
        driver.find_element(By.ID, "logs-q").send_keys('"injected fault"')
        Select(driver.find_element(By.ID, "logs-range")).select_by_visible_text("15m")
        status = driver.find_element(By.ID, "logs-status")

        def found() -> list[tuple[list[str], Any]]:
            driver.find_element(By.ID, "logs-run").click()
            wait_for(lambda: " records" in status.text, timeout=30, what="the log search")
            return table_rows(driver, "#logs-results")

        rows = wait_for(found, timeout=60, interval=2, what=f"{FAULTY}'s injected-fault errors in the log search")
        for cells, _ in rows:  # time, service, level, message, trace
            assert cells[1:3] == [FAULTY, "error"] and "injected fault" in cells[3], cells
        screenshot(driver, "console-demo-logs.png", shots)

        def linked_trace_in_jaeger() -> tuple[str, Any] | None:
            for _, row in table_rows(driver, "#logs-results"):
                for link in row.find_elements(By.CSS_SELECTOR, 'a[href^="#traces/"]'):
                    trace_id = link.get_attribute("href").rsplit("#traces/", 1)[1]
                    if jaeger_trace(jaeger.url, trace_id):
                        return trace_id, link
            return None

        trace_id, link = wait_for(linked_trace_in_jaeger, timeout=60, what="a listed record whose trace Jaeger has")
        link.click()
        wait_for(lambda: driver.execute_script("return location.hash") == f"#traces/{trace_id}", timeout=10, what="hop")
        failed = wait_for(
            lambda: [
                r.text
                for r in driver.find_elements(By.CSS_SELECTOR, "#trace-view .span-row")
                if r.find_elements(By.CSS_SELECTOR, ".bar.err")
            ],
            timeout=30,
            what=f"the waterfall of trace {trace_id} with a failed span",
        )
        assert any(FAULTY in text for text in failed), failed
        header = driver.find_element(By.CSS_SELECTOR, "#trace-view h3").text
        assert trace_id in header and "gateway" in header and FAULTY in header, header


def test_injected_fault_shows_in_error_rate_and_error_logs_then_clears(  # noqa: PLR0917 (fixtures)
    platform: Platform,
    prometheus: Server,
    elasticsearch: Server,
    jaeger: Server,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    state = ["--state-dir", str(platform.stack.state_dir)]
    eventually(lambda: (_error_ratio(prometheus, "15s") or 0) < 0.05, timeout=60, what="payments healthy before")

    assert cli.main([*state, "fault", FAULTY, "--error-rate", str(ERROR_RATE)]) == 0
    assert f"{FAULTY}: error rate {ERROR_RATE:g}" in capsys.readouterr().out
    try:
        ratio = eventually(
            lambda: (r := _error_ratio(prometheus, "20s")) is not None and 0.3 <= r <= 0.7 and r,
            timeout=90,
            what=f"{FAULTY}'s 5xx share in Prometheus near {ERROR_RATE}",
        )
        assert 0.3 <= ratio <= 0.7

        # Error logs of the failed requests in Elasticsearch, each carrying its trace's id; that
        # trace in Jaeger runs gateway → orders → payments with payments' server span failed.
        def error_logs() -> list[dict[str, Any]]:
            query = {
                "size": 20,
                "sort": [{"@timestamp": "desc"}],
                "query": {
                    "bool": {
                        "filter": [
                            {"term": {"service.name": FAULTY}},
                            {"term": {"log.level": "error"}},
                            {"match_phrase": {"message": "injected fault"}},
                            {"exists": {"field": "trace.id"}},
                        ]
                    }
                },
            }
            return [h["_source"] for h in _post(f"{elasticsearch.url}/meshwatch-logs-*/_search", query)["hits"]["hits"]]

        def logged_failed_trace() -> tuple[dict[str, Any], dict[str, Any]] | None:
            for log in error_logs():
                found = jaeger_trace(jaeger.url, _field(log, "trace.id"))  # None: not (yet) kept by tail sampling
                if found and {"gateway", "orders", FAULTY} <= _trace_services(found):
                    return log, found
            return None

        log, trace = eventually(logged_failed_trace, timeout=90, what="an error log whose trace is in Jaeger")
        failed = [
            span
            for span in trace["spans"]
            if trace["processes"][span["processID"]]["serviceName"] == FAULTY
            and _span_kind(span) == "server"
            and any(t["key"] == "otel.status_code" and t["value"] == "ERROR" for t in span["tags"])
        ]
        assert failed, "payments' server span is not marked as failed"
        assert failed[0]["operationName"] == "POST /charge"  # the route survives the fault
        # The log line was written inside that request: in its server span or one of its children.
        spans = {span["spanID"]: span for span in trace["spans"]}
        logged_in, ancestry = spans.get(_field(log, "span.id")), []
        while logged_in is not None:
            ancestry.append(logged_in["spanID"])
            parent = next((r["spanID"] for r in logged_in.get("references", []) if r["refType"] == "CHILD_OF"), None)
            logged_in = spans.get(parent) if parent else None
        assert failed[0]["spanID"] in ancestry, "the error log is not inside payments' failed request"
        # The same, as a person finds it: the console's log search, then the trace of a log line.
        _log_search_opens_a_failed_trace_in_chromium(platform.server("console").url, jaeger, tmp_path)
    finally:
        assert cli.main([*state, "fault", FAULTY, "--clear"]) == 0
    assert f"{FAULTY}: no faults" in capsys.readouterr().out
    eventually(
        lambda: (r := _error_ratio(prometheus, "10s")) is not None and r < 0.1,
        timeout=90,
        what=f"{FAULTY}'s 5xx share back near 0 after --clear",
    )


#: The demo's memory budget (issue 15; docs/demo.md "Memory"): what ``meshwatch-demo status`` totals.
MEMORY_BUDGET_GIB = 2.5
#: The servers ``make demo`` runs: its backends and its own processes (a test session's stack may
#: also hold others, e.g. Kafka for the collector's tests, which the demo does not start).
DEMO_SERVERS = ("elasticsearch", "jaeger", "alertmanager", "prometheus", "redis", "nats", *PROCESSES)


def _status_memory(out: str) -> tuple[dict[str, float], float]:
    """``meshwatch-demo status`` parsed: MiB per server line, and the GiB of its total line."""
    per_server = {
        m["name"]: float(m["mib"]) for m in re.finditer(r"^(?P<name>\S+) +pid \d+ +(?P<mib>\d+) MiB ", out, re.M)
    }
    total = re.search(r"^memory \(RSS\) of all of it: (\d+\.\d+) GiB$", out, re.M)
    assert total, f"no total memory line in status:\n{out}"
    return per_server, float(total[1])


def _demo_gib(per_server: dict[str, float]) -> float:
    """The GiB of the servers ``make demo`` runs, from the parsed status lines."""
    missing = set(DEMO_SERVERS) - set(per_server)
    assert not missing, f"status lacks {sorted(missing)}"
    return sum(per_server[name] for name in DEMO_SERVERS) / 1024


def test_status_shows_every_process_and_the_memory_it_takes(
    platform: Platform, capsys: pytest.CaptureFixture[str]
) -> None:
    """The memory figure of docs/demo.md, asserted: under 2.5 GiB with the package's load (10 req/s,
    twice ``make demo``'s default 5), after the faults and alerts of the tests before."""
    state = ["--state-dir", str(platform.stack.state_dir)]
    assert cli.main([*state, "status"]) == 0
    out = capsys.readouterr().out
    for name in (*DEMO_SERVICES, "collector", "loadgen", "oncall"):
        assert f"\n{name} " in f"\n{out}", f"{name} missing from status:\n{out}"
    assert "no faults" in out and "req/s" in out
    done = re.search(r"^loadgen .*\[[\d.]+ req/s, (\d+) done", out, re.M)
    assert done and int(done[1]) > 100, f"the load generator has not been loading the demo:\n{out}"
    rss = rss_by_server(platform.stack.servers)
    assert all(rss[name] > 10 * 2**20 for name in DEMO_SERVICES), rss

    per_server, total_gib = _status_memory(out)
    # The total line is the sum of the lines above it (each rounded to a MiB).
    assert abs(sum(per_server.values()) / 1024 - total_gib) <= 0.01 + len(per_server) / 1024, out
    demo_gib = _demo_gib(per_server)
    print(f"demo memory (RSS): {demo_gib:.2f} GiB of the {total_gib:.2f} GiB status total")
    assert demo_gib < MEMORY_BUDGET_GIB, f"the demo takes {demo_gib:.2f} GiB (budget {MEMORY_BUDGET_GIB} GiB):\n{out}"
    if set(per_server) == set(DEMO_SERVERS):  # nothing else in this stack: the printed total is the demo's
        assert total_gib < MEMORY_BUDGET_GIB, out
