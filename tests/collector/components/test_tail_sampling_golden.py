"""Golden test: meshwatch's ``tail_sampling`` keeps the same traces as the OpenTelemetry
Collector contrib ``tailsamplingprocessor`` v0.161.0, fed the same spans with the same policies.

Both collectors receive the very same OTLP/HTTP requests (errors, latencies, attributes,
trace states, span counts, and about a thousand random trace ids for the probabilistic
policy) and export to an ``OtlpSink`` of their own, which keeps every span it is sent;
the sets of kept trace ids, and the spans of each, must be equal. The reference is
built by ``meshwatch-stack install otelcol-tailsampling``. Stateful policies
(``rate_limiting``, ``composite``) are left out: their outcome depends on the order
and timing in which each processor decides, not on the trace.
"""

from __future__ import annotations

import random
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from meshwatch.collector.otlp_sink import otlp_sink
from meshwatch.collector.otlp_values import set_any
from meshwatch.collector.testing import free_port
from meshwatch.stack.installer import BackendMissing, binary

pytestmark = pytest.mark.integration

DECISION_WAIT = "8s"
MS = 1_000_000
SERVICES = ["gateway", "orders", "payments", "inventory", "fraud"]

#: Every policy type both processors have, except the stateful ones, and every combinator.
POLICIES: list[dict[str, Any]] = [
    {
        "name": "no-health-checks",
        "type": "drop",
        "drop": {
            "drop_sub_policy": [
                {
                    "name": "health-route",
                    "type": "string_attribute",
                    "string_attribute": {"key": "http.route", "values": ["^/health"], "enabled_regex_matching": True},
                }
            ]
        },
    },
    {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
    {"name": "slow", "type": "latency", "latency": {"threshold_ms": 500}},
    {"name": "between", "type": "latency", "latency": {"threshold_ms": 200, "upper_threshold_ms": 260}},
    {
        "name": "server-errors",
        "type": "numeric_attribute",
        "numeric_attribute": {"key": "http.response.status_code", "min_value": 500},
    },
    {"name": "forced", "type": "boolean_attribute", "boolean_attribute": {"key": "app.force_sample", "value": True}},
    {"name": "gold", "type": "trace_state", "trace_state": {"key": "tenant", "values": ["gold"]}},
    {"name": "big", "type": "span_count", "span_count": {"min_spans": 9}},
    {
        "name": "routes",
        "type": "string_attribute",
        "string_attribute": {"key": "http.route", "values": ["/api/refund", "/api/admin"]},
    },
    {
        "name": "payments-4xx",
        "type": "and",
        "and": {
            "and_sub_policy": [
                {
                    "name": "payments",
                    "type": "string_attribute",
                    "string_attribute": {"key": "service.name", "values": ["payments"]},
                },
                {
                    "name": "4xx",
                    "type": "numeric_attribute",
                    "numeric_attribute": {"key": "http.response.status_code", "min_value": 400, "max_value": 499},
                },
            ]
        },
    },
    {
        "name": "vip-not-fast",
        "type": "and",
        "and": {
            "and_sub_policy": [
                {"name": "vip", "type": "boolean_attribute", "boolean_attribute": {"key": "app.vip", "value": True}},
                {
                    "name": "not-fast",
                    "type": "not",
                    "not": {"not_sub_policy": {"name": "fast", "type": "latency", "latency": {"threshold_ms": 100}}},
                },
            ]
        },
    },
    {
        "name": "paid-tenants-half",
        "type": "and",
        "and": {
            "and_sub_policy": [
                {
                    "name": "not-free",
                    "type": "string_attribute",
                    "string_attribute": {"key": "tenant", "values": ["free"], "invert_match": True},
                },
                {
                    "name": "half",
                    "type": "probabilistic",
                    "probabilistic": {"sampling_percentage": 50, "hash_salt": "tenants"},
                },
                {
                    "name": "cart",
                    "type": "string_attribute",
                    "string_attribute": {"key": "http.route", "values": ["/api/cart"]},
                },
            ]
        },
    },
    {"name": "rest", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10}},
]


def _kv(key: str, value: Any) -> Any:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    kv = KeyValue(key=key)
    set_any(kv.value, value)
    return kv


def _requests(seed: int = 14) -> tuple[list[bytes], set[str]]:
    """About 1200 traces, split over several requests (a trace's spans may arrive in two)."""
    rng = random.Random(seed)
    t0 = time.time_ns() - 60 * 1_000_000_000
    by_service: list[list[tuple[str, Span, int]]] = [[], []]  # two waves of requests
    all_ids: set[str] = set()
    for _ in range(1200):
        trace_id = rng.randbytes(16)
        all_ids.add(trace_id.hex())
        n = rng.choices([1, 2, 3, 4, 5, 6, 9, 10], [3, 3, 3, 2, 2, 1, 0.5, 0.5])[0]
        total_ms = rng.choices([5, 50, 90, 150, 230, 250, 270, 480, 510, 900], [4, 4, 3, 3, 1, 1, 1, 1, 0.5, 0.5])[0]
        root_id = rng.randbytes(8)
        route = rng.choices(
            ["/api/checkout", "/api/products", "/health/live", "/api/refund", "/api/cart"], [5, 5, 1, 1, 3]
        )[0]
        error_at = rng.randrange(n) if rng.random() < 0.07 else -1
        trace_state = rng.choices(["", "tenant=gold", "tenant=silver,vendor=x", "tenant=gold,Bad Key=1"], [8, 1, 1, 1])[
            0
        ]
        tenant = rng.choices([None, "free", "acme", 7], [1, 6, 2, 1])[0]
        for index in range(n):
            start = t0 + (0 if index == 0 else rng.randrange(0, max(1, total_ms // 2)) * MS)
            end = t0 + total_ms * MS if index == 0 else start + rng.randrange(1, max(2, total_ms // 2)) * MS
            attributes = [_kv("http.route", route)]
            if rng.random() < 0.1:
                attributes.append(_kv("http.response.status_code", rng.choice([200, 201, 404, 409, 500, 503])))
            if rng.random() < 0.03:
                attributes.append(_kv("app.force_sample", rng.choice([True, False, "true"])))
            if rng.random() < 0.03:
                attributes.append(_kv("app.vip", True))
            if tenant is not None and index == 0:
                attributes.append(_kv("tenant", tenant))
            span = Span(
                trace_id=trace_id,
                span_id=root_id if index == 0 else rng.randbytes(8),
                parent_span_id=b"" if index == 0 else root_id,
                name=f"op-{index}",
                kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=start,
                end_time_unix_nano=end,
                trace_state=trace_state if index == 0 else "",
                status=Status(code=Status.STATUS_CODE_ERROR if index == error_at else Status.STATUS_CODE_UNSET),
                attributes=attributes,
            )
            wave = 1 if index > 0 and rng.random() < 0.3 else 0
            by_service[wave].append((rng.choice(SERVICES), span, index))
    bodies = []
    for wave in by_service:
        rng.shuffle(wave)
        for start in range(0, len(wave), 400):
            request = ExportTraceServiceRequest()
            groups: dict[str, Any] = {}
            for service, span, _ in wave[start : start + 400]:
                if service not in groups:
                    rs = request.resource_spans.add()
                    rs.resource.attributes.append(_kv("service.name", service))
                    scope = rs.scope_spans.add()
                    scope.scope.name = "golden"
                    groups[service] = scope
                groups[service].spans.append(span)
            bodies.append(request.SerializeToString())
    return bodies, all_ids


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(
        f"{url}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def _kept(sink: Any) -> dict[str, int]:
    with sink.lock:
        spans = list(sink.spans)
    kept: dict[str, int] = {}
    for seen in spans:
        kept[seen.trace_id] = kept.get(seen.trace_id, 0) + 1
    return kept


def _settled(*sinks: Any, timeout: float = 90.0) -> list[dict[str, int]]:
    """What each sink holds once none of them has grown for 4 s (and each got something)."""
    deadline = time.monotonic() + timeout
    last: list[int] = []
    since = time.monotonic()
    while time.monotonic() < deadline:
        counts = [len(sink.spans) for sink in sinks]
        if counts != last:
            last, since = counts, time.monotonic()
        elif all(counts) and time.monotonic() - since > 4.0:
            return [_kept(sink) for sink in sinks]
        time.sleep(0.2)
    raise AssertionError(f"the sinks kept growing or stayed empty ({last} spans)")


def _start_reference(workdir: Path, sink_url: str) -> tuple[subprocess.Popen[bytes], str]:
    try:
        path = binary("otelcol-tailsampling")
    except BackendMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    port = free_port()
    config = {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{port}"}}}},
        "processors": {
            "tail_sampling": {
                "decision_wait": DECISION_WAIT,
                "num_traces": 50_000,
                "decision_cache": {"sampled_cache_size": 100_000, "non_sampled_cache_size": 100_000},
                "policies": POLICIES,
            }
        },
        "exporters": {"otlp_http": {"endpoint": sink_url, "compression": "none"}},
        "service": {
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["tail_sampling"], "exporters": ["otlp_http"]}
            },
        },
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "otelcol.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    log = (workdir / "otelcol.log").open("wb")
    process = subprocess.Popen(
        [str(path), "--config", str(workdir / "otelcol.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the reference collector exited: {(workdir / 'otelcol.log').read_text()[-3000:]}")
        try:
            _post(url, ExportTraceServiceRequest().SerializeToString())
            return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the reference collector did not answer on its OTLP/HTTP port")


def test_same_traces_kept_as_the_go_tail_sampling_processor(collector_factory, tmp_path: Path) -> None:
    bodies, all_ids = _requests()
    with otlp_sink() as go_sink, otlp_sink() as our_sink:
        reference, reference_url = _start_reference(tmp_path / "otelcol", go_sink.url)
        try:
            ours = collector_factory(
                {
                    "processors": {
                        "tail_sampling": {
                            "decision_wait": DECISION_WAIT,
                            "num_traces": 50_000,
                            "decision_cache": {"sampled_cache_size": 100_000, "non_sampled_cache_size": 100_000},
                            "policies": POLICIES,
                        }
                    },
                    "exporters": {"otlphttp": {"endpoint": our_sink.url}},
                    "service": {
                        "pipelines": {
                            "traces": {
                                "receivers": ["otlp"],
                                "processors": ["tail_sampling"],
                                "exporters": ["otlphttp"],
                            }
                        }
                    },
                }
            )
            started = time.monotonic()
            for body in bodies:  # the same requests, in the same order, to both
                _post(reference_url, body)
                _post(ours.http_url, body)
            sending = time.monotonic() - started
            # every span is in before either decides (late spans would be judged on timing)
            assert sending < 4.0, f"sending took {sending:.1f}s, too close to decision_wait"
            go_kept, our_kept = _settled(go_sink, our_sink)
        finally:
            reference.terminate()
            reference.wait(20)

    only_go, only_ours = set(go_kept) - set(our_kept), set(our_kept) - set(go_kept)
    assert not only_go and not only_ours, f"{len(only_go)} kept only by Go, {len(only_ours)} only by meshwatch"
    # the input exercises the policies: some traces kept for each reason, most dropped
    assert 250 < len(go_kept) < 900, len(go_kept)
    assert set(go_kept) <= all_ids
    assert go_kept == our_kept  # and each whole, span for span
    assert our_sink.duplicate_spans() == 0
    assert ours.metric("meshwatch_processor_tail_sampling_traces_total", decision="dropped") > 0
    assert ours.metric("meshwatch_processor_tail_sampling_traces_total", decision="sampled", policy="rest") > 0
