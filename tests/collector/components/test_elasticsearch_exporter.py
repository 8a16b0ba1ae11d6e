"""The elasticsearch exporter: document encoding, and the real Elasticsearch (template, search,
duplicates, mapping conflicts to dead letters, unreachable backend, retention)."""

from __future__ import annotations

import os
import random
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from elasticsearch import Elasticsearch

from meshwatch.collector.exporters import elasticsearch as es_exporter
from meshwatch.collector.exporters._es_docs import TEMPLATE_VERSION, encode_logs, index_template, level_of
from meshwatch.collector.sender import TransientError
from meshwatch.collector.signals import Signal
from meshwatch.stack import free_port
from meshwatch.stack.testing import eventually

from ._otlp import batch_of, logs, metric, settings

RESOURCE = {
    "service.name": "payments",
    "service.namespace": "shop",
    "service.version": "1.4.2",
    "service.instance.id": "pod-9",
    "deployment.environment.name": "staging",
    "host.name": "node-3",
    "cloud.region": "eu-west-1",
}
T0 = 1_764_072_000_123_456_789  # 2025-11-25T12:00:00.123456789Z


def _docs(request) -> list[dict]:
    return [orjson.loads(source) for _, _, source in encode_logs(request, "meshwatch-logs").documents]


def test_record_becomes_the_documented_document() -> None:
    trace_id, span_id = bytes.fromhex("0af7651916cd43dd8448eb211c80319c"), bytes.fromhex("b7ad6b7169203331")
    request = logs(
        RESOURCE,
        [
            {
                "time": T0,
                "body": "card declined",
                "severity_number": 17,
                "severity_text": "ERROR",
                "trace_id": trace_id,
                "span_id": span_id,
                "attributes": {
                    "code.namespace": "payments.api",
                    "exception.type": "CardError",
                    "exception.message": "declined",
                    "exception.stacktrace": "Traceback ...",
                    "order.id": "A-17",
                    "retries": 2,
                },
            }
        ],
        scope="payments.logger",
    )
    encoded = encode_logs(request, "meshwatch-logs")
    (index, doc_id, _), doc = encoded.documents[0], _docs(request)[0]
    assert index == "meshwatch-logs-2025.11.25"
    assert doc == {
        "@timestamp": "2025-11-25T12:00:00.123456789Z",
        "ecs": {"version": "8.17.0"},
        "message": "card declined",
        "log": {"level": "error", "logger": "payments.api"},
        "event": {"severity": 17},
        "service": {
            "name": "payments",
            "namespace": "shop",
            "version": "1.4.2",
            "node": {"name": "pod-9"},
            "environment": "staging",
        },
        "host": {"name": "node-3", "hostname": "node-3"},
        "trace": {"id": "0af7651916cd43dd8448eb211c80319c"},
        "span": {"id": "b7ad6b7169203331"},
        "error": {"type": "CardError", "message": "declined", "stack_trace": "Traceback ..."},
        "attributes": {"code.namespace": "payments.api", "order.id": "A-17", "retries": 2},
        "resource": RESOURCE,
        "scope": {"name": "payments.logger", "version": "1.0"},
    }
    assert encode_logs(request, "meshwatch-logs").documents[0][1] == doc_id  # deterministic _id
    assert encoded.body.startswith(b'{"create":{"_index":"meshwatch-logs-2025.11.25","_id":"%s"}}\n' % doc_id.encode())


def test_levels_bodies_and_fallback_times() -> None:
    assert [level_of("", n) for n in (1, 5, 9, 13, 17, 21, 0)] == [
        "trace",
        "debug",
        "info",
        "warn",
        "error",
        "fatal",
        "",
    ]
    assert level_of("WARNING", 0) == "warn" and level_of("Critical", 0) == "fatal"
    request = logs(
        {"service.name": "a"},
        [{"time": 0, "observed": T0, "body": {"event": "login", "ok": True}, "severity_number": 0}],
        scope="",
    )
    doc = _docs(request)[0]
    assert doc["@timestamp"] == "2025-11-25T12:00:00.123456789Z"
    assert orjson.loads(doc["message"]) == {"event": "login", "ok": True}
    assert "log" not in doc and "trace" not in doc and "event" not in doc


# --- against the real Elasticsearch ---------------------------------------------------------


@pytest.fixture(scope="module")
def es(elasticsearch) -> Elasticsearch:
    client = Elasticsearch(elasticsearch.url, request_timeout=30)
    yield client
    client.close()


def _sender(elasticsearch, prefix: str, **options) -> es_exporter.ElasticsearchSender:
    config = es_exporter.ElasticsearchConfig(endpoints=[elasticsearch.url], index_prefix=prefix, **options)
    sender = es_exporter.ElasticsearchSender(config)
    sender.start(None)
    return sender


def _prefix() -> str:
    return f"mwtest-{uuid.uuid4().hex[:8]}"


def _old_day() -> tuple[int, str]:
    """A random day in the 1990s (its own index, so tests do not meet), as ns and YYYY.MM.DD."""
    day = datetime(1990, 1, 1, 12, tzinfo=UTC).timestamp() + random.randrange(3650) * 86400
    return int(day * 1e9), datetime.fromtimestamp(day, UTC).strftime("%Y.%m.%d")


@pytest.mark.integration
def test_template_is_installed_once_with_the_contract_mapping(elasticsearch, es) -> None:
    prefix = _prefix()
    sender = _sender(elasticsearch, prefix)
    try:
        template = es.indices.get_index_template(name=prefix)["index_templates"][0]["index_template"]
        assert template["version"] == TEMPLATE_VERSION and template["index_patterns"] == [f"{prefix}-*"]
        again = _sender(elasticsearch, prefix)
        assert again.ensure_template() is False  # idempotent: the installed version is kept
        again.shutdown()
        nanos, day = _old_day()
        sender.send(batch_of(Signal.LOGS, logs(RESOURCE, [{"time": nanos, "body": "x"}])))
        mapping = es.indices.get_mapping(index=f"{prefix}-{day}")[f"{prefix}-{day}"]["mappings"]
        props = mapping["properties"]
        assert props["@timestamp"]["type"] == "date_nanos"
        assert props["message"] == {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 1024}}}
        assert props["event"]["properties"]["severity"]["type"] == "long"
        assert props["ecs"]["properties"]["version"]["type"] == "keyword"
        assert props["attributes"]["type"] == "flattened" and props["resource"]["type"] == "flattened"
        assert props["service"]["properties"]["node"]["properties"]["name"]["type"] == "keyword"
        assert props["error"]["properties"]["stack_trace"]["type"] == "text"
        assert mapping["dynamic"] == "strict"
    finally:
        sender.shutdown()
        es.indices.delete(index=f"{prefix}-*")
        es.indices.delete_index_template(name=prefix)


@pytest.mark.integration
def test_an_upgraded_template_reaches_the_indices_the_old_one_made(elasticsearch, es) -> None:
    """After an upgrade, records with the new fields still land in the day's existing index.

    The old template (version 1, before the ECS names) made today's index with a strict
    mapping; the new exporter must add its fields to it, else every record is refused as
    ``strict_dynamic_mapping_exception`` until the next day's index.
    """
    prefix = _prefix()
    nanos, day = _old_day()
    old = index_template(prefix, 1, 0)
    old_properties = old["template"]["mappings"]["properties"]
    for field in ("ecs", "event"):
        old_properties.pop(field)
    old["version"] = 1
    es.indices.put_index_template(name=prefix, **{k: v for k, v in old.items() if k != "_meta"})
    es.indices.create(index=f"{prefix}-{day}")  # made by the old template, as on the day of an upgrade
    assert "ecs" not in es.indices.get_mapping(index=f"{prefix}-{day}")[f"{prefix}-{day}"]["mappings"]["properties"]
    sender = _sender(elasticsearch, prefix)
    try:
        result = sender.send(batch_of(Signal.LOGS, logs(RESOURCE, [{"time": nanos, "body": "after the upgrade"}])))
        assert result.rejected == 0, result
        es.indices.refresh(index=f"{prefix}-{day}")
        hits = es.search(index=f"{prefix}-{day}", query={"term": {"ecs.version": "8.17.0"}})["hits"]["hits"]
        assert [h["_source"]["message"] for h in hits] == ["after the upgrade"]
    finally:
        sender.shutdown()
        es.indices.delete(index=f"{prefix}-*")
        es.indices.delete_index_template(name=prefix)


@pytest.mark.integration
def test_logs_are_searchable_by_documented_fields_and_resends_do_not_duplicate(elasticsearch, es) -> None:
    prefix = _prefix()
    sender = _sender(elasticsearch, prefix)
    marker = uuid.uuid4().hex
    trace_id = os.urandom(16)
    records = [
        {
            "body": f"payment {i} declined {marker}",
            "severity_text": "WARN",
            "trace_id": trace_id,
            "span_id": os.urandom(8),
            "attributes": {"order.id": f"A-{i}", "exception.type": "CardError"},
        }
        for i in range(50)
    ]
    batch = batch_of(Signal.LOGS, logs(RESOURCE, records))
    try:
        assert sender.send(batch).rejected == 0
        assert sender.send(batch_of(Signal.LOGS, batch.message)).rejected == 0  # the very same records again
        es.indices.refresh(index=f"{prefix}-*")
        query = {
            "bool": {
                "filter": [
                    {"match": {"message": marker}},
                    {"term": {"service.name": "payments"}},
                    {"term": {"log.level": "warn"}},
                    {"term": {"trace.id": trace_id.hex()}},
                    {"term": {"service.environment": "staging"}},
                    {"term": {"service.node.name": "pod-9"}},
                    {"term": {"ecs.version": "8.17.0"}},
                    {"term": {"error.type": "CardError"}},
                    {"term": {"attributes.order.id": "A-7"}},
                    {"term": {"resource.cloud.region": "eu-west-1"}},
                ]
            }
        }
        hits = es.search(index=f"{prefix}-*", query=query)["hits"]
        assert hits["total"]["value"] == 1
        assert es.count(index=f"{prefix}-*", query={"match": {"message": marker}})["count"] == 50  # no duplicates
        today = datetime.now(UTC).strftime("%Y.%m.%d")
        assert hits["hits"][0]["_index"] == f"{prefix}-{today}"
    finally:
        sender.shutdown()
        es.indices.delete(index=f"{prefix}-*")
        es.indices.delete_index_template(name=prefix)


@pytest.mark.integration
def test_mapping_conflicts_become_dead_letters_and_the_rest_is_indexed(elasticsearch, es) -> None:
    prefix = _prefix()
    sender = _sender(elasticsearch, prefix)
    nanos, day = _old_day()
    # Someone created the day's index by hand with ``message`` as a number: our documents conflict.
    es.indices.create(index=f"{prefix}-{day}", mappings={"properties": {"message": {"type": "long"}}})
    good = {"body": "fine", "time": time.time_ns()}
    bad = {"body": "not a number", "time": nanos}
    try:
        result = sender.send(batch_of(Signal.LOGS, logs(RESOURCE, [good, bad, bad | {"body": "neither"}])))
        assert result.retry is None
        assert result.rejected == 2 and result.rejected_reason == "document_parsing_exception"
        letter = result.dead_letters[0]
        assert letter["status"] == 400 and letter["index"] == f"{prefix}-{day}"
        assert letter["document"]["message"] == "not a number"
        assert "message" in letter["error"]["reason"]
        es.indices.refresh(index=f"{prefix}-*")
        assert es.count(index=f"{prefix}-*", query={"match": {"message": "fine"}})["count"] == 1
    finally:
        sender.shutdown()
        es.indices.delete(index=f"{prefix}-*")
        es.indices.delete_index_template(name=prefix)


@pytest.mark.integration
def test_through_the_queued_exporter_conflicts_reach_the_dead_letter_file_and_are_counted(
    elasticsearch, es, host, telemetry
) -> None:
    prefix = _prefix()
    nanos, day = _old_day()
    es.indices.create(index=f"{prefix}-{day}", mappings={"properties": {"message": {"type": "long"}}})
    config = es_exporter.ElasticsearchConfig.model_validate(
        {"endpoints": [elasticsearch.url], "index_prefix": prefix, "sending_queue": {"fsync": "never"}}
    )
    exporter = es_exporter.factory.create(settings("elasticsearch", Signal.LOGS, telemetry=telemetry), config)
    exporter.start(host)
    marker = uuid.uuid4().hex
    try:
        exporter.consume(
            batch_of(Signal.LOGS, logs(RESOURCE, [{"body": f"ok {marker}"}, {"body": "conflict", "time": nanos}]))
        )
        labels = {"exporter": "elasticsearch", "signal": "logs"}
        eventually(
            lambda: metric(telemetry, "meshwatch_exporter_dropped_items_total", **labels, reason="rejected") == 1,
            timeout=30,
            what="the conflicting record counted as dropped{reason=rejected}",
        )
        assert metric(telemetry, "meshwatch_exporter_sent_items_total", **labels) == 1
        letters = [
            orjson.loads(line)
            for line in Path(host.storage_dir, "deadletter", "elasticsearch.jsonl").read_bytes().splitlines()
        ]
        assert len(letters) == 1 and letters[0]["document"]["message"] == "conflict"
        assert letters[0]["reason"] == "document_parsing_exception"
        es.indices.refresh(index=f"{prefix}-*")
        assert es.count(index=f"{prefix}-*", query={"match": {"message": marker}})["count"] == 1
    finally:
        exporter.shutdown(5)
        es.indices.delete(index=f"{prefix}-*")
        es.indices.delete_index_template(name=prefix)


@pytest.mark.integration
def test_retention_deletes_whole_old_indices(elasticsearch, es) -> None:
    prefix = _prefix()
    sender = _sender(elasticsearch, prefix, retention_days=7)
    try:
        for day in ("2026.01.01", "2026.01.10", "2026.01.11", "2026.01.17"):
            es.indices.create(index=f"{prefix}-{day}")
        deleted = sender.delete_expired_indices(today=datetime(2026, 1, 18, tzinfo=UTC))
        assert deleted == [f"{prefix}-2026.01.01", f"{prefix}-2026.01.10"]
        assert sorted(es.indices.get_alias(index=f"{prefix}-*")) == [f"{prefix}-2026.01.11", f"{prefix}-2026.01.17"]
    finally:
        sender.shutdown()
        es.indices.delete(index=f"{prefix}-*")
        es.indices.delete_index_template(name=prefix)


def test_unreachable_elasticsearch_is_a_transient_error() -> None:
    port = free_port()  # nothing listens there
    config = es_exporter.ElasticsearchConfig(endpoints=[f"http://127.0.0.1:{port}"], timeout=5)
    sender = es_exporter.ElasticsearchSender(config)
    sender.start(None)  # does not fail: the queue keeps data until Elasticsearch is back
    with pytest.raises(TransientError) as caught:
        sender.send(batch_of(Signal.LOGS, logs(RESOURCE, [{"body": "x"}])))
    assert caught.value.reason == "unreachable"
    sender.shutdown()


def test_secrets_are_not_in_the_config_repr() -> None:
    config = es_exporter.ElasticsearchConfig(user="elastic", password="hunter2", api_key="k-secret")
    assert "hunter2" not in repr(config) and "k-secret" not in str(config.model_dump())


@pytest.mark.parametrize(
    "value", ["héllo", "x" * 300, "", True, False, 0, -5, 2**62, -(2**63), 12.5, [1, "a", {"k": 2.5}], {"k": [True]}]
)
def test_attribute_bytes_decode_like_the_message(value) -> None:
    from meshwatch.collector.exporters._logs_lite import any_bytes_to_python
    from meshwatch.collector.otlp_values import any_to_python, python_to_any

    message = python_to_any(value)
    assert any_bytes_to_python(message.SerializeToString()) == any_to_python(message) == value
