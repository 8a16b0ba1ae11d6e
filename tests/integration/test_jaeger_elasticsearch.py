"""Jaeger on Elasticsearch: a trace that went through the meshwatch collector outlives a Jaeger restart.

The positive control is the same restart of an in-memory Jaeger, which loses the trace: it proves
the restart is real (a new process, the same ports) and that finding the trace again is the storage's doing.
"""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from meshwatch.collector.testing import collector_factory  # noqa: F401 - the fixture, used by name
from meshwatch.stack import Server, Stack
from meshwatch.stack.backends import JAEGER_INDEX_PREFIX, jaeger_config
from meshwatch.stack.runner import StackError
from meshwatch.stack.testing import JaegerOnElasticsearch, eventually, start_or_fail


def _collector_to(jaeger: Server) -> dict[str, Any]:
    return {
        "receivers": {"otlp": {}},
        "exporters": {
            "otlp/jaeger": {
                "endpoint": jaeger.urls["otlp_grpc"],
                "tls": {"insecure": True},
                "retry_on_failure": {"initial_interval": 0.2, "max_interval": 1, "max_elapsed_time": 0},
            }
        },
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger"]}}},
    }


def _send_checkout(collector_grpc: str, service: str) -> str:
    """A two-span checkout trace sent with the OTel SDK to the collector; its hex trace id."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"http://{collector_grpc}", insecure=True))
    )
    tracer = provider.get_tracer("meshwatch.tests")
    with (
        tracer.start_as_current_span("POST /checkout", attributes={"order.id": "A-17"}) as parent,
        tracer.start_as_current_span("charge card"),
    ):
        pass
    provider.shutdown()
    return format(parent.get_span_context().trace_id, "032x")


def _trace(jaeger: Server, trace_id: str) -> dict[str, Any] | None:
    """The trace from Jaeger's query API, or None when Jaeger says it has no such trace."""
    try:
        with urllib.request.urlopen(f"{jaeger.url}/api/traces/{trace_id}", timeout=10) as response:
            data = json.loads(response.read())["data"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    return data[0] if data else None


def _whole_trace(jaeger: Server, trace_id: str) -> dict[str, Any] | None:
    trace = _trace(jaeger, trace_id)
    return trace if trace and len(trace["spans"]) == 2 else None


def _services(jaeger: Server) -> set[str]:
    with urllib.request.urlopen(f"{jaeger.url}/api/services", timeout=10) as response:
        return set(json.loads(response.read())["data"] or [])


def _span_docs(elasticsearch: Server, trace_id: str) -> int:
    url = f"{elasticsearch.url}/{JAEGER_INDEX_PREFIX}-jaeger-span-*/_count?q=traceID:{trace_id}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(json.loads(response.read())["count"])


@pytest.mark.integration
def test_a_trace_is_found_again_after_jaeger_on_elasticsearch_restarts(
    collector_factory,  # noqa: F811 - the imported fixture
    jaeger_es: JaegerOnElasticsearch,
    elasticsearch: Server,
) -> None:
    jaeger = jaeger_es.server
    collector = collector_factory(_collector_to(jaeger))
    service = f"durable-{uuid.uuid4().hex[:8]}"
    trace_id = _send_checkout(collector.grpc_endpoint, service)
    before = eventually(lambda: _whole_trace(jaeger, trace_id), timeout=30, what=f"trace {trace_id} in Jaeger")
    # It is Elasticsearch that holds it, in Jaeger's own indices.
    assert eventually(lambda: _span_docs(elasticsearch, trace_id) == 2, timeout=20, what="2 span documents in ES")

    old_pid, old_ports = jaeger.pid, dict(jaeger.ports)
    jaeger = jaeger_es.restart()
    assert jaeger.pid != old_pid and jaeger.ports == old_ports

    after = _whole_trace(jaeger, trace_id)
    assert after is not None, f"trace {trace_id} lost by the Jaeger restart"
    assert {s["operationName"] for s in after["spans"]} == {"POST /checkout", "charge card"}
    assert {s["spanID"] for s in after["spans"]} == {s["spanID"] for s in before["spans"]}
    tags = {t["key"]: t["value"] for s in after["spans"] for t in s["tags"]}
    assert tags["order.id"] == "A-17"
    assert service in _services(jaeger)

    # The collector keeps exporting to the restarted Jaeger on the same port.
    second = _send_checkout(collector.grpc_endpoint, service)
    eventually(lambda: _whole_trace(jaeger, second), timeout=30, what=f"trace {second} sent after the restart")


@pytest.mark.integration
def test_positive_control_an_in_memory_jaeger_loses_the_trace_on_restart(collector_factory) -> None:  # noqa: F811
    state_dir = Path(tempfile.mkdtemp(prefix="meshwatch-test-jaeger-mem-"))
    own = Stack(state_dir)
    try:
        jaeger = start_or_fail(own, "jaeger", storage="memory")
        collector = collector_factory(_collector_to(jaeger))
        trace_id = _send_checkout(collector.grpc_endpoint, f"volatile-{uuid.uuid4().hex[:8]}")
        eventually(lambda: _whole_trace(jaeger, trace_id), timeout=30, what=f"trace {trace_id} in Jaeger")
        jaeger = own.restart("jaeger")
        assert _trace(jaeger, trace_id) is None
    finally:
        own.down()


def test_jaeger_on_elasticsearch_is_configured_with_its_own_prefix_on_one_shard() -> None:
    ports = dict.fromkeys(("query", "query_grpc", "otlp_grpc", "otlp_http", "health", "metrics"), 1)
    config = jaeger_config(ports, {"storage": "elasticsearch", "elasticsearch_url": "http://127.0.0.1:9299/"})
    backend = config["extensions"]["jaeger_storage"]["backends"]["traces"]["elasticsearch"]
    assert backend["server_urls"] == ["http://127.0.0.1:9299"]
    assert backend["indices"]["index_prefix"] == "meshwatch-traces"
    assert backend["indices"]["spans"] == {"shards": 1, "replicas": 0}
    assert config["exporters"]["jaeger_storage_exporter"]["trace_storage"] == "traces"
    assert config["extensions"]["jaeger_query"]["storage"]["traces"] == "traces"
    memory = jaeger_config(ports, {"storage": "memory"})["extensions"]["jaeger_storage"]["backends"]["traces"]
    assert memory == {"memory": {"max_traces": 50_000}}


def test_jaeger_on_elasticsearch_without_one_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHWATCH_JAEGER_STORAGE", raising=False)
    with pytest.raises(StackError, match=r"start elasticsearch first.*storage='memory'"):
        Stack(tmp_path).start("jaeger")
    monkeypatch.setenv("MESHWATCH_JAEGER_STORAGE", "cassandra")
    with pytest.raises(StackError, match=r"choose from elasticsearch, memory"):
        Stack(tmp_path).start("jaeger")
