"""Tail sampling on the running demo: Jaeger keeps every error trace and few others, the metrics stay exact.

The demo's collector (collector/collector.yaml) derives spanmetrics and the service graph
from every span, then tail-samples ("errors + latency > 500 ms + 5 % of the rest") before
Jaeger. With 20 % of payments' requests failing, over a window in which this test is the
only traffic (the platform's load generator is paused, and resumed after):

* the test is the shopper: it sends the load generator's request mix itself with its own
  root span per request (a ``traceparent`` header, and the root span exported to the
  collector as a browser's instrumentation would), so it knows every trace id and outcome;
* every error trace is in Jaeger, by trace id: those answered 5xx, and those whose id
  payments logged with "injected fault" in Elasticsearch; and the error spans Jaeger holds
  for these traces are as many as spanmetrics counted (every error span, not deduplicated):
  one error trace dropped, and the counts differ;
* of the traces without an error, at most 10 % are in Jaeger, at least every one the
  ``probabilistic`` policy's hash keeps (the same pure function), and the others kept are
  slower than 500 ms;
* the request counts Prometheus has from spanmetrics (what the RED and service graph
  panels draw rates of) equal the requests sent, and the services' own SDK counts.

The positive control of that rate check runs the shipped config's traces and metrics
pipelines in a collector of its own, and the same config with ``tail_sampling`` moved in
front of spanmetrics: the check passes on the first and must fail on the second. The trace
accounting (``sampling_problems``) has its own control on planted Jaeger answers: a lost error
trace, an error span only spanmetrics saw, too many fine traces kept, a hash-kept one missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshwatch.collector.processors._tail_policies import Probabilistic, fnv1a64
from meshwatch.collector.testing import free_port, scrape, start_collector
from meshwatch.demo import cli
from meshwatch.demo.loadgen import Shopper, plan
from meshwatch.demo.platform import HTTP_SERVICES, Platform
from meshwatch.stack import Server
from meshwatch.stack.testing import eventually

from .conftest import post_json, promql

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "collector" / "collector.yaml"
FAULTY = "payments"
ERROR_RATE = 0.2
RATE, DURATION = 10.0, 60.0  # requests/s and seconds: ~600 traces, ~150 checkouts, ~30 failing
SHOPPER = "tail-sampling-shopper"
#: What the shipped config keeps besides errors (asserted against the file below).
SLOW_MS, REST_PERCENT = 500, 5.0
#: spanmetrics/servicegraph flush every 15 s; Prometheus scrapes every second in tests/demo.
SETTLE = 17.0


# --- the rate check, shared by the live test and its positive control ------------------------


def count_mismatches(expected: dict[str, float], observed: dict[str, float]) -> list[str]:
    """Each count Prometheus (or the exporter) shows that differs from the true one, said plainly."""
    return [
        f"{name}: metrics show {observed.get(name, 0):g}, true count {want:g}"
        for name, want in expected.items()
        if observed.get(name, 0) != want
    ]


def _policies() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(SHIPPED.read_text())
    return {p["type"]: p for p in config["processors"]["tail_sampling"]["policies"]}


def kept_by_hash(trace_id: bytes, percent: float = REST_PERCENT) -> bool:
    """Whether the ``probabilistic`` policy keeps this trace (the processor's own function)."""
    policy = Probabilistic("", percent)
    return fnv1a64(trace_id, policy.state) <= policy.threshold


def test_the_shipped_policy_is_errors_slow_and_a_share_of_the_rest() -> None:
    policies = _policies()
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    assert policies["latency"]["latency"]["threshold_ms"] == SLOW_MS
    assert policies["probabilistic"]["probabilistic"]["sampling_percentage"] == REST_PERCENT
    assert len(policies) == 3


# --- the shopper: the mix of the load generator, with trace ids of its own ---------------------


@dataclass
class Sent:
    trace_id: bytes
    span_id: bytes
    kind: str
    status: int  # HTTP status, 0 when no answer came
    start_ns: int
    end_ns: int


@dataclass
class Shopping:
    sent: list[Sent] = field(default_factory=list)
    unsent_roots: list[Sent] = field(default_factory=list)


def _root_spans(sent: list[Sent]) -> bytes:
    """The shopper's CLIENT root spans as OTLP (status left unset: its errors are the services')."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    attr = rs.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", SHOPPER
    scope = rs.scope_spans.add()
    scope.scope.name = "tests.demo.tail_sampling"
    for item in sent:
        span = scope.spans.add()
        span.trace_id, span.span_id, span.name, span.kind = item.trace_id, item.span_id, f"shop {item.kind}", 3
        span.start_time_unix_nano, span.end_time_unix_nano = item.start_ns, item.end_ns
    return request.SerializeToString()


async def _shop(gateway: str, otlp_http: str, rate: float, duration: float) -> Shopping:
    """Open-loop requests at ``rate`` for ``duration`` s; root spans exported every second, as an SDK would."""
    rng, shopper, shopping = random.Random(14), Shopper(), Shopping()

    async def one(client: httpx.AsyncClient) -> None:
        request = plan(rng, shopper)
        trace_id, span_id = os.urandom(16), os.urandom(8)
        headers = {"traceparent": f"00-{trace_id.hex()}-{span_id.hex()}-01"}
        start = time.time_ns()
        try:
            response = await client.request(request.method, request.path, json=request.json, headers=headers)
            status = response.status_code
            if request.kind == "checkout" and status == 201:
                shopper.recent_orders.append(response.json()["id"])
        except httpx.HTTPError:
            status = 0
        item = Sent(trace_id, span_id, request.kind, status, start, time.time_ns())
        shopping.sent.append(item)
        shopping.unsent_roots.append(item)

    async def export(client: httpx.AsyncClient) -> None:
        roots, shopping.unsent_roots = shopping.unsent_roots, []
        if roots:
            answer = await client.post(
                f"{otlp_http}/v1/traces", content=_root_spans(roots), headers={"Content-Type": "application/x-protobuf"}
            )
            answer.raise_for_status()

    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client, httpx.AsyncClient(timeout=30) as otlp:
        tasks: set[asyncio.Task[None]] = set()
        began, n, next_export = time.monotonic(), 0, time.monotonic() + 1
        while time.monotonic() - began < duration:
            await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
            n += 1
            task = asyncio.create_task(one(client))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if time.monotonic() >= next_export:
                next_export = time.monotonic() + 1
                await export(otlp)
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        await export(otlp)
    return shopping


# --- what the backends say ----------------------------------------------------------------------


def _total(prometheus: Server, query: str) -> float:
    result = promql(prometheus, f"sum({query})")
    return float(result[0]["value"][1]) if result else 0.0


def _counts(prometheus: Server) -> dict[str, float]:
    """Cumulative counts from Prometheus: spanmetrics and servicegraph (from spans), SDK metrics (from services)."""
    calls, sdk = "traces_span_metrics_calls_total", "http_server_request_duration_seconds_count"
    counts = {
        f"spanmetrics {s} server spans": _total(
            prometheus, f'{calls}{{service_name="{s}", span_kind="SPAN_KIND_SERVER"}}'
        )
        for s in HTTP_SERVICES
    }
    counts |= {f"sdk {s} requests": _total(prometheus, f'{sdk}{{job="{s}"}}') for s in HTTP_SERVICES}
    counts["spanmetrics shopper root spans"] = _total(prometheus, f'{calls}{{service_name="{SHOPPER}"}}')
    counts["spanmetrics error spans"] = _total(prometheus, f'{calls}{{status_code="STATUS_CODE_ERROR"}}')
    counts[f"spanmetrics {FAULTY} failed server spans"] = _total(
        prometheus, f'{calls}{{service_name="{FAULTY}", span_kind="SPAN_KIND_SERVER", status_code="STATUS_CODE_ERROR"}}'
    )
    counts[f"sdk {FAULTY} 5xx"] = _total(prometheus, f'{sdk}{{job="{FAULTY}", http_response_status_code=~"5.."}}')
    counts[f"servicegraph orders -> {FAULTY}"] = _total(
        prometheus, f'traces_service_graph_request_total{{client="orders", server="{FAULTY}"}}'
    )
    return counts


def _settled(prometheus: Server, timeout: float = 120) -> dict[str, float]:
    """The counts once nothing changes for longer than a flush interval (no request in flight or unflushed)."""
    last = [_counts(prometheus)]

    def unchanged() -> dict[str, float] | None:
        time.sleep(SETTLE)
        now = _counts(prometheus)
        same = now == last[0]
        last[0] = now
        return now if same else None

    return eventually(unchanged, timeout=timeout, interval=0, what="the demo's counters to settle")


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def _jaeger_trace(jaeger: Server, trace_id: bytes) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{jaeger.url}/api/traces/{trace_id.hex()}", timeout=10) as response:
            found = json.loads(response.read()).get("data") or []
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    return found[0] if found else None


def _error_spans(trace: dict[str, Any]) -> int:
    return sum(
        any(t["key"] == "otel.status_code" and t["value"] == "ERROR" for t in span["tags"]) for span in trace["spans"]
    )


def _duration_ms(trace: dict[str, Any]) -> float:
    start = min(s["startTime"] for s in trace["spans"])
    return (max(s["startTime"] + s["duration"] for s in trace["spans"]) - start) / 1000


def _fault_logged_traces(elasticsearch: Server, since: float) -> set[str]:
    """Trace ids of payments' "injected fault" error logs since ``since``: the services' own record of failures."""
    query = {
        "size": 1000,
        "_source": ["trace.id", "trace"],
        "query": {
            "bool": {
                "filter": [
                    {"term": {"service.name": FAULTY}},
                    {"term": {"log.level": "error"}},
                    {"match_phrase": {"message": "injected fault"}},
                    {"range": {"@timestamp": {"gte": int(since * 1000), "format": "epoch_millis"}}},
                ]
            }
        },
    }
    hits = post_json(f"{elasticsearch.url}/meshwatch-logs-*/_search", query)["hits"]["hits"]
    ids = set()
    for hit in hits:
        source = hit["_source"]
        ids.add(source["trace.id"] if "trace.id" in source else source["trace"]["id"])
    return ids


@pytest.fixture
def paused_load(platform: Platform) -> Iterator[None]:
    """The platform's load generator stopped for the test (so the test's requests are all there is), then resumed."""
    platform.stack.stop("loadgen")
    try:
        yield
    finally:
        platform.start_load()


@pytest.mark.e2e
def test_tail_sampling_keeps_every_error_trace_and_few_others_while_metrics_count_every_request(
    platform: Platform, paused_load: None, prometheus: Server, jaeger: Server, elasticsearch: Server
) -> None:
    state = ["--state-dir", str(platform.stack.state_dir)]
    before = _settled(prometheus)
    began = time.time() - 1
    assert cli.main([*state, "fault", FAULTY, "--error-rate", str(ERROR_RATE)]) == 0
    try:
        shopping = asyncio.run(
            _shop(platform.server("gateway").url, platform.server("collector").urls["otlp_http"], RATE, DURATION)
        )
    finally:
        assert cli.main([*state, "fault", FAULTY, "--clear"]) == 0
    sent = shopping.sent
    answered = [s for s in sent if s.status]
    assert len(answered) == len(sent) >= RATE * DURATION * 0.9, f"{len(answered)} of {len(sent)} answered"
    failed_5xx = {s.trace_id for s in sent if s.status >= 500}
    checkouts = [s for s in sent if s.kind == "checkout"]
    assert 0.08 * len(checkouts) <= len(failed_5xx) <= 0.35 * len(checkouts), (len(failed_5xx), len(checkouts))

    # Counts settle: every span flushed by spanmetrics, every trace decided (decision_wait 10 s).
    counted = _delta(_settled(prometheus), before)

    # 1. The request rates the dashboards draw from spanmetrics are the true ones: every request counted once.
    by_service = {s: float(counted[f"sdk {s} requests"]) for s in HTTP_SERVICES}
    expected = {f"spanmetrics {s} server spans": by_service[s] for s in HTTP_SERVICES}
    expected["spanmetrics gateway server spans"] = float(len(sent))
    expected["sdk gateway requests"] = float(len(sent))
    expected["spanmetrics shopper root spans"] = float(len(sent))
    expected[f"servicegraph orders -> {FAULTY}"] = by_service[FAULTY]
    expected[f"spanmetrics {FAULTY} failed server spans"] = counted[f"sdk {FAULTY} 5xx"]
    assert count_mismatches(expected, counted) == [], counted

    # 2. Every error trace is in Jaeger, by id: the failed answers, and what payments logged as failed.
    logged = _fault_logged_traces(elasticsearch, began)
    ours = {s.trace_id.hex() for s in sent}
    assert logged and logged <= ours, f"{len(logged - ours)} logged failures are not the test's traces"
    assert len(logged) == counted[f"sdk {FAULTY} 5xx"]  # one log line per failed charge
    traces = {s.trace_id: _jaeger_trace(jaeger, s.trace_id) for s in sent}
    failed = failed_5xx | {bytes.fromhex(t) for t in logged}
    problems, summary = sampling_problems(traces, failed, counted["spanmetrics error spans"])
    print(summary)
    assert problems == [], summary


def sampling_problems(
    traces: dict[bytes, dict[str, Any] | None], failed: set[bytes], error_spans_counted: float
) -> tuple[list[str], str]:
    """What Jaeger holds of the test's traces (``None``: not kept) against what tail sampling must keep.

    ``failed``: trace ids known to have failed without asking Jaeger; ``error_spans_counted``: the
    error spans spanmetrics counted over the same traces. Returns the problems and a one-line summary.
    """
    problems = []
    kept = {tid for tid, trace in traces.items() if trace}
    # Every error trace is in Jaeger, by id (the failures known from the services and the answers) ...
    missing = sorted(t.hex() for t in failed if t not in kept)
    if missing:
        problems.append(f"{len(missing)} error traces are not in Jaeger, e.g. {missing[:3]}")
    # ... and whole: the error spans Jaeger holds are all spanmetrics counted, so none is elsewhere.
    in_jaeger = sum(_error_spans(trace) for trace in traces.values() if trace)
    if in_jaeger != error_spans_counted:
        problems.append(
            f"Jaeger holds {in_jaeger} error spans of these traces, spanmetrics counted {error_spans_counted:g}"
        )
    # Of the traces without an error, few are kept: the hash's share, plus slow ones.
    with_errors = {tid for tid, trace in traces.items() if trace and _error_spans(trace)} | failed
    fine = [tid for tid in traces if tid not in with_errors]
    fine_kept = [tid for tid in fine if tid in kept]
    share = len(fine_kept) / max(1, len(fine))
    if share > 0.10:
        problems.append(f"{share:.1%} of the fine traces are in Jaeger (at most 10 %)")
    hashed = [tid for tid in fine if kept_by_hash(tid)]
    if not hashed or not all(tid in kept for tid in hashed):
        problems.append(
            f"{sum(t not in kept for t in hashed)} of {len(hashed)} traces the probabilistic policy keeps are missing"
        )
    fast = [t.hex() for t in fine_kept if not kept_by_hash(t) and _duration_ms(traces[t]) <= SLOW_MS]  # type: ignore[arg-type]
    if fast:
        problems.append(f"kept though fine, fast and outside the {REST_PERCENT:g} %: {fast[:3]}")
    summary = (
        f"{len(traces)} traces, {len(with_errors)} with errors ({len(with_errors & kept)} kept), "
        f"{len(fine_kept)} of {len(fine)} fine ones kept ({share:.1%}), {len(hashed)} by the hash; {problems}"
    )
    return problems, summary


def _fake_trace(duration_ms: float, errors: int = 0) -> dict[str, Any]:
    """A trace as Jaeger's API returns it, with what ``sampling_problems`` reads."""
    error = [{"key": "otel.status_code", "value": "ERROR"}]
    spans = [
        {"startTime": 0, "duration": int(duration_ms * 1000), "tags": error if i < errors else []} for i in range(3)
    ]
    return {"spans": spans}


def test_the_sampling_accounting_catches_a_lost_error_trace_and_too_many_kept() -> None:
    ids = [os.urandom(16) for _ in range(400)]
    failed = set(ids[:20])
    hashed = {t for t in ids[20:] if kept_by_hash(t)}
    good = {t: (_fake_trace(50, errors=1) if t in failed else _fake_trace(50) if t in hashed else None) for t in ids}
    slow = next(t for t in ids[20:] if t not in hashed)
    good[slow] = _fake_trace(800)  # kept for its latency
    assert sampling_problems(good, failed, 20)[0] == []
    # Planted defects, each caught: a failed trace not kept; an error trace no one knew of (only
    # spanmetrics counted its error span) not kept; every trace kept; a hash-kept trace missing;
    # a fast fine trace kept.
    lost = dict(good) | {ids[0]: None}
    assert any("1 error traces are not in Jaeger" in p for p in sampling_problems(lost, failed, 20)[0])
    unknown = sampling_problems(good, failed, 21)[0]
    assert unknown == ["Jaeger holds 20 error spans of these traces, spanmetrics counted 21"]
    everything = {t: trace or _fake_trace(50) for t, trace in good.items()}
    assert any("of the fine traces are in Jaeger" in p for p in sampling_problems(everything, failed, 20)[0])
    one_hashed = next(iter(hashed))
    assert any(
        "traces the probabilistic policy keeps are missing" in p
        for p in sampling_problems(dict(good) | {one_hashed: None}, failed, 20)[0]
    )
    fast = dict(good) | {slow: _fake_trace(100)}
    assert any("kept though fine, fast" in p for p in sampling_problems(fast, failed, 20)[0])


# --- positive control of the rate check: tail sampling in front of spanmetrics --------------------


def _pipelines_only(config: dict[str, Any], exporter_port: int) -> dict[str, Any]:
    """The shipped config's traces and metrics pipelines, with traces to ``debug`` instead of Jaeger."""
    config["exporters"] = {"debug": {}, "prometheus": {"endpoint": f"127.0.0.1:{exporter_port}"}}
    config["connectors"]["spanmetrics"]["metrics_flush_interval"] = "1s"
    config["processors"]["tail_sampling"]["decision_wait"] = "1s"
    config["processors"]["tail_sampling"]["decision_wait_after_root_received"] = "0s"
    config["service"]["pipelines"].pop("logs")
    config["service"]["pipelines"]["metrics"]["exporters"] = ["prometheus"]
    for pipeline in config["service"]["pipelines"].values():
        pipeline["exporters"] = ["debug" if e == "otlp/jaeger" else e for e in pipeline["exporters"]]
    config["service"].pop("telemetry", None)
    return config


def _misplaced(config: dict[str, Any]) -> dict[str, Any]:
    pipelines = config["service"]["pipelines"]
    first = pipelines.pop("traces/sampled")
    config["connectors"].pop("forward/sampled")
    pipelines["traces"]["processors"] = [*pipelines["traces"]["processors"], *first["processors"]]
    pipelines["traces"]["exporters"] = [e for e in pipelines["traces"]["exporters"] if e != "forward/sampled"]
    pipelines["traces"]["exporters"].append(first["exporters"][0])
    return config


def _served_counts(config: dict[str, Any], port: int, workdir: Path, *, service: str, errors: int, fine: int) -> float:
    env = {k: f"127.0.0.1:{free_port()}" for k in ("MESHWATCH_OTLP_GRPC_ENDPOINT", "MESHWATCH_OTLP_HTTP_ENDPOINT")}
    collector = start_collector(config, workdir, env=env)
    try:
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        attr = rs.resource.attributes.add()
        attr.key, attr.value.string_value = "service.name", service
        spans = rs.scope_spans.add()
        now = time.time_ns()
        for i in range(errors + fine):
            span = spans.spans.add()
            span.trace_id, span.span_id = _outside_the_share(), os.urandom(8)
            span.name, span.kind = "POST /charge", 2
            span.start_time_unix_nano, span.end_time_unix_nano = now, now + 2_000_000
            if i < errors:
                span.status.code = 2
        answer = httpx.post(
            f"{collector.http_url}/v1/traces",
            content=request.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=10,
        )
        assert answer.status_code == 200

        def calls() -> float:
            samples = scrape(f"http://127.0.0.1:{port}/metrics")
            return sum(
                v
                for (name, labels), v in samples.items()
                if name == "traces_span_metrics_calls_total" and dict(labels).get("service_name") == service
            )

        eventually(lambda: calls() > 0, timeout=30, what="spanmetrics from the control collector")
        time.sleep(3)  # a decision_wait and two flushes more: all that will be counted is
        return calls()
    finally:
        collector.stop()


def _outside_the_share() -> bytes:
    """A trace id the probabilistic policy does not keep (so only errors pass a misplaced sampler)."""
    while True:
        candidate = os.urandom(16)
        if not kept_by_hash(candidate):
            return candidate


def test_the_rate_check_fails_when_tail_sampling_runs_before_spanmetrics(tmp_path: Path) -> None:
    errors, fine = 10, 90
    observed = {}
    for name, build in (("shipped", lambda c: c), ("misplaced", _misplaced)):
        port = free_port()
        config = build(_pipelines_only(yaml.safe_load(SHIPPED.read_text()), port))
        observed[name] = _served_counts(
            config, port, tmp_path / name, service=f"control-{name}", errors=errors, fine=fine
        )
    expected = {"spanmetrics payments server spans": float(errors + fine)}
    assert count_mismatches(expected, {"spanmetrics payments server spans": observed["shipped"]}) == []
    misplaced = count_mismatches(expected, {"spanmetrics payments server spans": observed["misplaced"]})
    assert misplaced == ["spanmetrics payments server spans: metrics show 10, true count 100"], observed
