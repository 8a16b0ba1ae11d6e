"""The OpenTelemetry JS SDK (npm, v2.12 / exporters 0.223) as a client of the collector, the
way a Node.js service sends: traces over OTLP/HTTP JSON, OTLP/HTTP protobuf and OTLP/gRPC,
metrics and logs over OTLP/HTTP JSON, the providers flushed and shut down.

What arrives at a counting sink must be what the SDK made (ids, parents, kinds, typed
attributes, the error status, the log's trace id, the counter's value and the histogram's
count), once, and the trace must be in Jaeger whole. The Python SDK sends OTLP/HTTP only as
protobuf, so this is OTLP/JSON as an SDK writes it, not as the suite's own helpers do.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from meshwatch.collector.otlp_sink import OtlpSink, otlp_sink
from meshwatch.stack.installer import binary
from meshwatch.stack.testing import eventually

from ..core._helpers import jaeger_exporter, jaeger_trace

pytestmark = pytest.mark.integration

PROTOCOLS = ("http/json", "http/protobuf", "grpc")
TOKEN = "js-interop-token"
SERVER, CLIENT, INTERNAL = 2, 3, 1


def run_client(
    collector: Any, protocol: str, service: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CLIENT_PROTOCOL": protocol,
        "CLIENT_HTTP_ENDPOINT": collector.http_url,
        "CLIENT_GRPC_ENDPOINT": f"http://{collector.grpc_endpoint}",
        "CLIENT_SERVICE": service,
        **({"CLIENT_BEARER": token} if token else {}),
    }
    script = binary("otel-js-client")
    return subprocess.run(
        ["node", str(script)], env=env, cwd=script.parent, capture_output=True, text=True, timeout=90, check=False
    )


def pipelines(sink: OtlpSink, jaeger: Any) -> dict[str, Any]:
    exporters = {"otlphttp/sink": {"endpoint": sink.url}, "otlp/jaeger": jaeger_exporter(jaeger)}
    return {
        "exporters": exporters,
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "exporters": list(exporters)},
                "metrics": {"receivers": ["otlp"], "exporters": ["otlphttp/sink"]},
                "logs": {"receivers": ["otlp"], "exporters": ["otlphttp/sink"]},
            }
        },
    }


def test_every_signal_of_the_js_sdk_arrives_as_it_was_made(collector_factory: Any, jaeger: Any) -> None:
    with otlp_sink() as sink:
        collector = collector_factory({"receivers": {"otlp": {}}, **pipelines(sink, jaeger)})
        made = {}
        for protocol in PROTOCOLS:
            service = "js-" + protocol.replace("/", "-")
            result = run_client(collector, protocol, service)
            assert result.returncode == 0, f"{protocol}: the JS SDK's export failed:\n{result.stderr[-2000:]}"
            made[service] = json.loads(result.stdout)

        def spans_of(service: str) -> list[Any]:
            with sink.lock:
                return [s for s in sink.spans if s.resource.get("service.name") == service]

        for service, trace in made.items():
            eventually(lambda s=service: len(spans_of(s)) >= 4, timeout=20, what=f"{service}'s 4 spans")
            spans = {s.name: s for s in spans_of(service)}
            assert len(spans_of(service)) == 4, f"{service}: {len(spans_of(service))} spans for 4"
            assert {s.trace_id for s in spans.values()} == {trace["trace_id"]}
            assert {(s["name"], s["span_id"]) for s in trace["spans"]} == {(n, s.span_id) for n, s in spans.items()}
            root = spans["GET /checkout"]
            assert root.parent_id == "" and root.kind == SERVER
            assert {s.parent_id for n, s in spans.items() if n != "GET /checkout"} == {root.span_id}
            assert spans["SELECT orders"].kind == CLIENT and spans["render"].kind == INTERNAL
            assert [n for n, s in spans.items() if s.error] == ["POST payments"]
            assert root.attributes == {
                "http.request.method": "GET",
                "http.route": "/checkout",
                "http.response.status_code": 200,
                "interop.ratio": 0.25,
                "interop.flag": True,
                "interop.tags": ["a", "b"],
                "interop.counts": [1, 2, 3],
            }
            assert type(root.attributes["http.response.status_code"]) is int
            assert root.resource["deployment.environment.name"] == "interop"

            def logs(s: str = service) -> list[Any]:
                with sink.lock:
                    return [r for r in sink.logs if r.resource.get("service.name") == s]

            eventually(lambda: logs() != [], timeout=20, what=f"{service}'s log record")
            [record] = logs()
            assert (record.body, record.severity, record.trace_id) == (
                "payment failed: card declined",
                "ERROR",
                trace["trace_id"],
            )
            assert record.attributes == {"order.id": 42}

            def points(s: str = service) -> dict[str, Any]:
                with sink.lock:
                    return {p.metric: p for p in sink.points if p.resource.get("service.name") == s}

            eventually(lambda: {"interop.requests", "interop.duration"} <= set(points()), timeout=20, what="metrics")
            assert points()["interop.requests"].value == 5.0
            assert points()["interop.requests"].attributes == {"http.route": "/checkout"}
            assert points()["interop.duration"].count == 3

            eventually(
                lambda t=trace["trace_id"]: len((jaeger_trace(jaeger, t) or {}).get("spans", [])) == 4,
                timeout=30,
                what=f"{service}'s trace whole in Jaeger",
            )
            stored = jaeger_trace(jaeger, trace["trace_id"])
            assert stored is not None
            failed = [
                s["operationName"]
                for s in stored["spans"]
                if {"key": "error", "type": "bool", "value": True} in s.get("tags", [])
            ]
            assert failed == ["POST payments"]


def test_a_bearer_token_is_required_of_the_js_sdk_and_a_wrong_one_is_refused(
    collector_factory: Any, jaeger: Any
) -> None:
    with otlp_sink() as sink:
        config = {"receivers": {"otlp": {"auth": {"bearer_token": TOKEN}}}, **pipelines(sink, jaeger)}
        collector = collector_factory(config)
        refused = run_client(collector, "http/json", "js-wrong-token", token="not-the-token")
        assert refused.returncode != 0, "the JS SDK saw no failure with a wrong token"
        assert "401" in refused.stderr or "Unauthorized" in refused.stderr, refused.stderr[-2000:]
        accepted = run_client(collector, "http/json", "js-right-token", token=TOKEN)
        assert accepted.returncode == 0, accepted.stderr[-2000:]
        trace_id = json.loads(accepted.stdout)["trace_id"]
        eventually(lambda: len([s for s in sink.spans if s.trace_id == trace_id]) == 4, timeout=20, what="4 spans")
        with sink.lock:
            assert not [s for s in sink.spans if s.resource.get("service.name") == "js-wrong-token"]
            assert not [r for r in sink.logs if r.resource.get("service.name") == "js-wrong-token"]
        assert TOKEN not in collector.log_tail() and "not-the-token" not in collector.log_tail()
