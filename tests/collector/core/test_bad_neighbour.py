"""One bad request must not take its neighbours with it (issue 11, finding 1), in every exporter.

A span with a 5-byte trace id is refused by Jaeger ("invalid TraceID length") for
the whole request it travels in. Two defences, each tested against the real Jaeger:

* the receiver refuses just the bad spans (OTLP ``partial_success``) and keeps the
  rest, so what reaches the queue is what the backend takes;
* should a bad request reach the queue anyway (queued before this check existed, or
  a rule the receiver does not know), the exporter splits a merged send that the
  backend refused for good, so only the offending original request is dead-lettered.

The same through the real collector for the other two push exporters, each with what its
backend refuses in legal OTLP: Elasticsearch a record whose attribute nests deeper than a
``flattened`` field takes (refused per document in the bulk answer: only that record is
dead-lettered), Prometheus a sample six hours old (its remote-write receiver refuses the
whole write, 400 "out of bounds": the split finds the one request).
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import ComponentId, CreateSettings
from meshwatch.collector.exporters.otlp import factory as otlp_factory
from meshwatch.collector.exporters.otlphttp import factory as otlphttp_factory
from meshwatch.collector.host import CollectorHost
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry
from meshwatch.stack.testing import eventually

from ._helpers import jaeger_exporter, jaeger_span_count, random_trace_ids, span_request, traces_config

pytestmark = pytest.mark.integration

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
GOOD = 100


def _bad_request() -> bytes:
    """One span whose trace id is 5 bytes long: Jaeger refuses the whole request carrying it."""
    request = ExportTraceServiceRequest.FromString(span_request(random_trace_ids(1), service="bad-neighbour"))
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\x01\x02\x03\x04\x05"
    return request.SerializeToString()


def _all_in_jaeger(jaeger, trace_ids: list[bytes]) -> int:
    return sum(1 for trace_id in trace_ids if jaeger_span_count(jaeger, trace_id) == 1)


def _dead_letters(storage: Path) -> list[dict]:
    lines: list[dict] = []
    for path in sorted((storage / "deadletter").glob("*.jsonl")):
        lines.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return lines


def test_receiver_refuses_only_the_bad_span_and_every_good_trace_reaches_jaeger(collector_factory, jaeger) -> None:
    # One consumer lingering 2 s: all 101 requests are merged into one send, the worst case.
    exporter = jaeger_exporter(jaeger, sending_queue={"num_consumers": 1}, batch={"linger": "2s"})
    collector = collector_factory(traces_config(jaeger, exporter=exporter))
    trace_ids = random_trace_ids(GOOD)
    with grpc.insecure_channel(collector.grpc_endpoint) as channel:
        export = channel.unary_unary(TRACES)
        for i, trace_id in enumerate(trace_ids):
            export(span_request([trace_id], service="bad-neighbour"), timeout=10)
            if i == GOOD // 2:
                answer = ExportTraceServiceResponse.FromString(export(_bad_request(), timeout=10))
    # the bad span is refused by name, in the OTLP way, and counted
    assert answer.partial_success.rejected_spans == 1
    assert "trace_id" in answer.partial_success.error_message
    assert "16 bytes" in answer.partial_success.error_message
    refused = collector.metric(
        "meshwatch_receiver_refused_items_total", transport="grpc", signal="traces", reason="invalid_id"
    )
    assert refused == 1
    delivered = eventually(
        lambda: _all_in_jaeger(jaeger, trace_ids) == GOOD or None, timeout=30, what="all good traces in Jaeger"
    )
    assert delivered
    assert _dead_letters(collector.storage_dir) == []


@pytest.mark.parametrize("kind", ["otlp", "otlphttp"])
def test_exporter_dead_letters_only_the_request_jaeger_refuses(tmp_path: Path, jaeger, kind: str) -> None:
    """The bad request is put straight into the exporter's queue (past the receiver's check)."""
    factory = otlp_factory if kind == "otlp" else otlphttp_factory
    telemetry = Telemetry()
    settings = CreateSettings(ComponentId(kind, "jaeger"), Signal.TRACES, telemetry)
    common = {
        "sending_queue": {"num_consumers": 1, "fsync": "never"},
        "batch": {"linger": "1s"},
        "retry_on_failure": {"initial_interval": "50ms", "max_interval": "200ms"},
    }
    http = {"endpoint": jaeger.urls["otlp_http"], **common}
    config = factory.config_model.model_validate(jaeger_exporter(jaeger, **common) if kind == "otlp" else http)
    host = CollectorHost(tmp_path)
    exporter = factory.create(settings, config)
    exporter.start(host)
    trace_ids = random_trace_ids(GOOD)
    bad = _bad_request()
    try:
        for i, trace_id in enumerate(trace_ids):
            exporter.consume(Batch.from_bytes(Signal.TRACES, span_request([trace_id], service="bad-neighbour")))
            if i == GOOD // 2:
                exporter.consume(Batch.from_bytes(Signal.TRACES, bad))
        eventually(
            lambda: _all_in_jaeger(jaeger, trace_ids) == GOOD or None, timeout=30, what="all good traces in Jaeger"
        )
        eventually(lambda: _dead_letters(tmp_path), timeout=10, what="a dead letter")
        time.sleep(0.5)  # nothing else follows it
        letters = _dead_letters(tmp_path)
        assert len(letters) == 1, letters
        assert letters[0]["items"] == 1
        assert "TraceID" in letters[0]["error"], letters[0]["error"]  # Jaeger's own words
        assert base64.b64decode(letters[0]["request_protobuf_base64"]) == bad
        labels = {"exporter": f"{kind}/jaeger", "signal": "traces"}
        registry = telemetry.registry
        dropped = registry.get_sample_value("meshwatch_exporter_dropped_items_total", {**labels, "reason": "rejected"})
        assert dropped == 1
        assert registry.get_sample_value("meshwatch_exporter_sent_items_total", labels) == GOOD
    finally:
        exporter.shutdown(5)


# --- elasticsearch and prometheusremotewrite, through the real collector process ------------------
#
# These backends refuse what the receiver cannot know about: Elasticsearch a document it cannot
# map, Prometheus a sample older than its head accepts. Both are legal OTLP, so the collector
# acknowledges them; the exporter must keep the refusal to the item at fault.


def _merging_queue() -> dict:
    """One consumer lingering 2 s: the requests below are merged into one or two sends, the worst case."""
    return {"sending_queue": {"num_consumers": 1}, "batch": {"linger": "2s"}}


def _nested(depth: int) -> AnyValue:
    """A kvlist ``depth`` levels deep: legal OTLP, beyond the ``flattened`` field's depth limit (20)."""
    value = AnyValue(string_value="bottom")
    for level in range(depth):
        outer = AnyValue()
        outer.kvlist_value.values.add(key=f"level{level}", value=value)
        value = outer
    return value


def _log_request(run: str, bodies: list[str], *, deep: int = -1) -> bytes:
    """One request with a record per body; the record at index ``deep`` carries a 25-level attribute."""
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.add(key="service.name", value=AnyValue(string_value="bad-neighbour"))
    records = rl.scope_logs.add().log_records
    now = time.time_ns()
    for index, body in enumerate(bodies):
        record = records.add(time_unix_nano=now, severity_number=9)
        record.body.string_value = body
        record.attributes.add(key="run", value=AnyValue(string_value=run))
        if index == deep:
            record.attributes.add(key="payload", value=_nested(25))
    return request.SerializeToString()


def _es(elasticsearch, method: str, path: str) -> dict:
    request = urllib.request.Request(f"{elasticsearch.url}{path}", method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _dead_lettered_bodies(letters: list[dict]) -> list[str]:
    """The body of every record in the dead-letter file, whether a letter holds one document
    (a per-document refusal) or a whole request (a refused send)."""
    bodies = []
    for letter in letters:
        if "document" in letter:
            bodies.append(letter["document"]["message"])
            continue
        request = ExportLogsServiceRequest.FromString(base64.b64decode(letter["request_protobuf_base64"]))
        bodies.extend(
            r.body.string_value for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records
        )
    return sorted(bodies)


def test_elasticsearch_dead_letters_only_the_record_it_refuses(collector_factory, elasticsearch) -> None:
    prefix = f"mwtest-neighbour-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex
    exporter = {"endpoints": [elasticsearch.url], "index_prefix": prefix, **_merging_queue()}
    collector = collector_factory(
        {
            "exporters": {"elasticsearch": exporter},
            "service": {"pipelines": {"logs": {"receivers": ["otlp"], "exporters": ["elasticsearch"]}}},
        }
    )
    good = [f"good {run} {i}" for i in range(GOOD)]
    # the bad request: the refused record between two good ones of its own
    in_bad = [f"good {run} bad-request-{i}" for i in range(2)]
    acknowledged = 0
    try:
        with grpc.insecure_channel(collector.grpc_endpoint) as channel:
            export = channel.unary_unary(LOGS)
            for i, body in enumerate(good):
                export(_log_request(run, [body]), timeout=10)
                acknowledged += 1
                if i == GOOD // 2:
                    answer = ExportLogsServiceResponse.FromString(
                        export(_log_request(run, [in_bad[0], f"refused {run}", in_bad[1]], deep=1), timeout=10)
                    )
                    acknowledged += 3
        assert not answer.HasField("partial_success") or answer.partial_success.rejected_log_records == 0
        labels = {"exporter": "elasticsearch", "signal": "logs"}
        eventually(
            lambda: (
                collector.metric("meshwatch_exporter_sent_items_total", **labels)
                + collector.metric("meshwatch_exporter_dropped_items_total", **labels)
                >= acknowledged
            ),
            timeout=60,
            what="every acknowledged record sent or dropped",
        )
        _es(elasticsearch, "POST", f"/{prefix}-*/_refresh")
        search = _es(elasticsearch, "GET", f"/{prefix}-*/_search?size=500&_source=message")
        delivered = [hit["_source"]["message"] for hit in search["hits"]["hits"]]
        expected = sorted(good + in_bad)
        assert _es(elasticsearch, "GET", f"/{prefix}-*/_count")["count"] == len(expected)
        assert sorted(delivered) == expected  # every good record once: none lost, none twice
        letters = _dead_letters(collector.storage_dir)
        assert _dead_lettered_bodies(letters) == [f"refused {run}"]
        assert "depth" in json.dumps(letters[0]["error"]), letters[0]["error"]  # Elasticsearch's own words
        assert collector.metric("meshwatch_exporter_dropped_items_total", **labels, reason="rejected") == 1
        assert collector.metric("meshwatch_exporter_sent_items_total", **labels) == len(expected)
    finally:
        with contextlib.suppress(urllib.error.HTTPError):
            _es(elasticsearch, "DELETE", f"/{prefix}-*")
        with contextlib.suppress(urllib.error.HTTPError):
            _es(elasticsearch, "DELETE", f"/_index_template/{prefix}")


def _gauge_request(run: str, index: int, millis: int) -> bytes:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.add(key="service.name", value=AnyValue(string_value="bad-neighbour"))
    metric = rm.scope_metrics.add().metrics.add(name="neighbour_gauge")
    point = metric.gauge.data_points.add(time_unix_nano=millis * 1_000_000, as_double=float(index))
    point.attributes.add(key="run", value=AnyValue(string_value=run))
    point.attributes.add(key="i", value=AnyValue(string_value=str(index)))
    return request.SerializeToString()


def _promql(prometheus, query: str) -> list[dict]:
    url = f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["data"]["result"]


def test_prometheusremotewrite_dead_letters_only_the_request_prometheus_refuses(collector_factory, prometheus) -> None:
    run = uuid.uuid4().hex
    exporter = {"endpoint": f"{prometheus.url}/api/v1/write", **_merging_queue()}
    collector = collector_factory(
        {
            "exporters": {"prometheusremotewrite": exporter},
            "service": {"pipelines": {"metrics": {"receivers": ["otlp"], "exporters": ["prometheusremotewrite"]}}},
        }
    )
    selector = f'neighbour_gauge{{run="{run}"}}'
    with grpc.insecure_channel(collector.grpc_endpoint) as channel:
        export = channel.unary_unary(METRICS)
        # A first sample on its own, so Prometheus' head reaches "now" and refuses anything
        # older than an hour before it (out of bounds) whatever else it ingested this session.
        export(_gauge_request(run, 0, int(time.time() * 1000)), timeout=10)
        eventually(lambda: _promql(prometheus, f"count({selector})"), timeout=30, what="the first sample")
        now = int(time.time() * 1000)
        for i in range(1, GOOD):
            export(_gauge_request(run, i, now), timeout=10)
            if i == GOOD // 2:
                export(_gauge_request(run, -1, now - 6 * 3600 * 1000), timeout=10)  # six hours old
    acknowledged = GOOD + 1
    labels = {"exporter": "prometheusremotewrite", "signal": "metrics"}
    eventually(
        lambda: (
            collector.metric("meshwatch_exporter_sent_items_total", **labels)
            + collector.metric("meshwatch_exporter_dropped_items_total", **labels)
            >= acknowledged
        ),
        timeout=60,
        what="every acknowledged point sent or dropped",
    )
    series = _promql(prometheus, selector)
    delivered = sorted(int(s["metric"]["i"]) for s in series)
    assert delivered == list(range(GOOD)), f"missing: {sorted(set(range(GOOD)) - set(delivered))}"
    assert all(len(s["value"]) == 2 and float(s["value"][1]) == int(s["metric"]["i"]) for s in series)
    letters = _dead_letters(collector.storage_dir)
    assert len(letters) == 1, [
        {k: v for k, v in letter.items() if k != "request_protobuf_base64"} for letter in letters
    ]
    assert letters[0]["items"] == 1
    assert "out of bounds" in letters[0]["error"], letters[0]["error"]  # Prometheus' own words
    refused = ExportMetricsServiceRequest.FromString(base64.b64decode(letters[0]["request_protobuf_base64"]))
    point = refused.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0]
    assert {kv.key: kv.value.string_value for kv in point.attributes}["i"] == "-1"
    assert collector.metric("meshwatch_exporter_dropped_items_total", **labels, reason="rejected") == 1
    assert collector.metric("meshwatch_exporter_sent_items_total", **labels) == GOOD
    assert "sending it in halves" in collector.log_path.read_text()  # it was merged with good ones
