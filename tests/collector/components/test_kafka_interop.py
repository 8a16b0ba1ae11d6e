"""Interoperability with the reference OpenTelemetry Collector's kafka exporter and receiver (contrib v0.165.1).

Both directions, both encodings: the Go collector produces and meshwatch consumes, and the other
way round; spans must arrive intact (ids, names, attributes, resource) at a sink that keeps
duplicates. The Go side's records also show where its partitioner puts a trace, which meshwatch's
exporter must match for a consumer group to see each trace on one member.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshwatch.collector._kafka import sarama_partition, unmarshal
from meshwatch.collector.otlp_sink import OtlpSink, otlp_sink
from meshwatch.collector.signals import Signal
from meshwatch.collector.testing import free_port
from meshwatch.stack import BackendMissing, Server, binary
from meshwatch.stack.testing import eventually

from ._otlp import span, traces
from .test_kafka import PARTITIONS, _topic, exporter_collector, read_topic, receiver_collector, send, span_ids

pytestmark = pytest.mark.integration

ENCODINGS = ["otlp_proto", "otlp_json"]


@contextlib.contextmanager
def otelcol(
    config: dict[str, Any], workdir: Path, *, metrics_port: int | None = None, component: str = "otelcol"
) -> Iterator[subprocess.Popen[bytes]]:
    """The reference collector with ``config``, its own metrics on ``metrics_port`` (default: a free
    port); stopped after the block. ``component`` picks the build (``otelcol-tailsampling`` is the
    v0.161.0 one with contrib's loadbalancing exporter)."""
    try:
        program = binary(component)
    except BackendMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    metrics = metrics_port or free_port()
    config.setdefault("service", {})["telemetry"] = {
        "logs": {"level": "info"},
        "metrics": {"readers": [{"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": metrics}}}}]},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "otelcol.yaml").write_text(yaml.safe_dump(config))
    with (workdir / "otelcol.log").open("wb") as log:
        process = subprocess.Popen(
            [str(program), "--config", str(workdir / "otelcol.yaml")], stdout=log, stderr=subprocess.STDOUT
        )
    try:

        def up() -> bool:
            assert process.poll() is None, (workdir / "otelcol.log").read_text()[-3000:]
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=2) as response:
                return response.status == 200

        eventually(up, timeout=60, what="the reference collector's metrics endpoint")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _request() -> ExportTraceServiceRequest:
    trace_ids = [os.urandom(16) for _ in range(30)]
    return traces(
        {"service.name": "interop", "deployment.environment": "test"},
        [
            span(
                f"op-{i}",
                trace_id=trace_ids[i % 30],
                parent=os.urandom(8),
                attributes={"i": i, "ratio": i / 7, "ok": i % 2 == 0, "who": f"user-{i}"},
            )
            for i in range(300)
        ],
    )


def assert_intact(sink: OtlpSink, request: ExportTraceServiceRequest) -> None:
    expected = span_ids(request)
    eventually(lambda: sink.span_ids() >= expected, timeout=90, what="every span at the sink")
    assert len(sink.spans) == len(expected)  # none twice
    seen = {s.span_id: s for s in sink.spans}
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for original in ss.spans:
                got = seen[original.span_id.hex()]
                i = int(original.name.removeprefix("op-"))
                assert (got.name, got.trace_id, got.parent_id, got.kind) == (
                    original.name,
                    original.trace_id.hex(),
                    original.parent_span_id.hex(),
                    original.kind,
                )
                assert got.attributes == {"i": i, "ratio": i / 7, "ok": i % 2 == 0, "who": f"user-{i}"}
                assert got.resource == {"service.name": "interop", "deployment.environment": "test"}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_reference_collector_produces_and_meshwatch_consumes(
    collector_factory, kafka: Server, tmp_path: Path, encoding: str
) -> None:
    topic = _topic()
    grpc_port = free_port()
    reference = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"}}}},
        "exporters": {
            "kafka": {
                "brokers": [kafka.urls["bootstrap"]],
                "traces": {"topic": topic, "encoding": encoding},
                "partition_traces_by_id": True,
            }
        },
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["kafka"]}}},
    }
    request = _request()
    with otlp_sink() as sink:
        config = receiver_collector(kafka, topic, sink.url)
        config["receivers"]["kafka"]["traces"]["encoding"] = encoding
        collector_factory(config, name="meshwatch-consumer")
        with otelcol(reference, tmp_path / "otelcol"):
            send(f"127.0.0.1:{grpc_port}", request)
            assert_intact(sink, request)
    # Where the Go exporter put each trace is where meshwatch's exporter puts it.
    records = read_topic(kafka, topic, 30)
    for record in records:
        carried = unmarshal(Signal.TRACES, record.value(), encoding)  # type: ignore[arg-type]
        ids = {s.trace_id.hex() for rs in carried.resource_spans for ss in rs.scope_spans for s in ss.spans}
        assert ids == {record.key().decode()}
        assert record.partition() == sarama_partition(record.key(), PARTITIONS)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_meshwatch_produces_and_reference_collector_consumes(
    collector_factory, kafka: Server, tmp_path: Path, encoding: str
) -> None:
    topic = _topic()
    request = _request()
    with otlp_sink() as sink:
        reference = {
            "receivers": {
                "kafka": {
                    "brokers": [kafka.urls["bootstrap"]],
                    "group_id": f"go-{topic}",
                    "initial_offset": "earliest",
                    "traces": {"topics": [topic], "encoding": encoding},
                }
            },
            "exporters": {"otlphttp": {"endpoint": sink.url, "compression": "none"}},
            "service": {"pipelines": {"traces": {"receivers": ["kafka"], "exporters": ["otlphttp"]}}},
        }
        config = exporter_collector(kafka, topic, partition_traces_by_id=True)
        config["exporters"]["kafka"]["traces"]["encoding"] = encoding
        producer = collector_factory(config, name="meshwatch-producer")
        with otelcol(reference, tmp_path / "otelcol"):
            send(producer.grpc_endpoint, request)
            assert_intact(sink, request)
