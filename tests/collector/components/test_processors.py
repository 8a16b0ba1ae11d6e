"""Unit tests of the attributes, resource, redaction and probabilistic_sampler processors."""

from __future__ import annotations

import hashlib
import os

import pytest
from pydantic import ValidationError

from meshwatch.collector.processors import attributes, probabilistic_sampler, redaction, resource
from meshwatch.collector.signals import Signal

from ._otlp import Sink, attrs_dict, batch_of, logs, metric, settings, span, traces


def _attributes(actions: list[dict], sink: Sink, host, telemetry) -> attributes.AttributesProcessor:
    config = attributes.factory.config_model.model_validate({"actions": actions})
    proc = attributes.factory.create(settings("attributes/t", Signal.TRACES, telemetry=telemetry), config, sink)
    proc.start(host)
    return proc


def test_attribute_actions_follow_the_collector_semantics(host, telemetry) -> None:
    sink = Sink()
    proc = _attributes(
        [
            {"key": "env", "value": "prod", "action": "insert"},
            {"key": "present", "value": "new", "action": "insert"},
            {"key": "missing", "value": 1, "action": "update"},
            {"key": "present", "value": 7, "action": "update"},
            {"key": "copied", "from_attribute": "http.route", "action": "upsert"},
            {"key": "user.email", "action": "hash"},
            {"pattern": "^tmp\\.", "action": "delete"},
            {"key": "http.route", "pattern": "^/(?P<api_version>v[0-9]+)/", "action": "extract"},
            {"key": "retries", "converted_type": "int", "action": "convert"},
        ],
        sink,
        host,
        telemetry,
    )
    request = traces(
        {"service.name": "checkout"},
        [
            span(
                attributes={
                    "present": "old",
                    "http.route": "/v2/orders",
                    "user.email": "a@example.com",
                    "tmp.a": 1,
                    "tmp.b": 2,
                    "retries": "3",
                }
            )
        ],
    )
    batch = batch_of(Signal.TRACES, request)
    raw_before = batch.raw
    proc.consume(batch)
    assert sink.batches == [batch]
    got = attrs_dict(batch.message.resource_spans[0].scope_spans[0].spans[0].attributes)
    assert got == {
        "present": 7,
        "http.route": "/v2/orders",
        "user.email": hashlib.sha256(b"a@example.com").hexdigest(),
        "retries": 3,
        "env": "prod",
        "copied": "/v2/orders",
        "api_version": "v2",
    }
    assert batch.raw != raw_before  # re-encoded because it changed


def test_unchanged_batch_keeps_its_bytes(host, telemetry) -> None:
    sink = Sink()
    proc = _attributes([{"key": "absent", "value": 1, "action": "update"}], sink, host, telemetry)
    batch = batch_of(Signal.TRACES, traces({"service.name": "a"}, [span()]))
    raw = batch.raw
    proc.consume(batch)
    assert batch.raw is raw


def test_attributes_on_logs_and_metric_points(host, telemetry) -> None:
    sink = Sink()
    proc = _attributes([{"key": "team", "value": "payments", "action": "upsert"}], sink, host, telemetry)
    batch = batch_of(Signal.LOGS, logs({"service.name": "a"}, [{"body": "x"}, {"body": "y"}]))
    proc.consume(batch)
    records = batch.message.resource_logs[0].scope_logs[0].log_records
    assert [attrs_dict(r.attributes) for r in records] == [{"team": "payments"}] * 2


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ({"key": "a", "action": "insert"}, "needs 'value'"),
        ({"key": "a", "value": 1, "from_attribute": "b", "action": "upsert"}, "only one"),
        ({"key": "a", "pattern": "(x)", "action": "extract"}, "named groups"),
        ({"key": "a", "pattern": "(", "action": "delete"}, "not a valid regular expression"),
        ({"key": "a", "action": "explode"}, "action"),
        ({"key": "a", "value": 1, "action": "upsert", "colour": "red"}, "colour"),
    ],
)
def test_bad_actions_are_refused_with_the_reason(action: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        attributes.factory.config_model.model_validate({"actions": [action]})


def test_resource_processor_edits_every_resource(host, telemetry) -> None:
    sink = Sink()
    config = resource.factory.config_model.model_validate(
        {"attributes": [{"key": "deployment.environment.name", "value": "staging", "action": "upsert"}]}
    )
    proc = resource.factory.create(settings("resource", Signal.LOGS, telemetry=telemetry), config, sink)
    proc.start(host)
    request = logs({"service.name": "a", "host.ip": "10.0.0.1"}, [{"body": "x"}])
    request.resource_logs.add().CopyFrom(request.resource_logs[0])
    batch = batch_of(Signal.LOGS, request)
    proc.consume(batch)
    for rl in batch.message.resource_logs:
        assert attrs_dict(rl.resource.attributes)["deployment.environment.name"] == "staging"


# --- redaction -----------------------------------------------------------------------------


def _redaction(host, telemetry, sink: Sink, **options) -> redaction.RedactionProcessor:
    config = redaction.factory.config_model.model_validate(options)
    proc = redaction.factory.create(settings("redaction", Signal.LOGS, telemetry=telemetry), config, sink)
    proc.start(host)
    return proc


SECRET_ATTRIBUTES = {
    "db.password": "hunter2",
    "http.request.header.authorization": "Bearer abc.def",
    "http.request.header.x-api-key": "k-123",
    "http.response.header.set-cookie": "sid=1",
    "client_secret": "s3",
    "access_token": "t0k",
}
KEPT_ATTRIBUTES = {"gen_ai.usage.input_tokens": 812, "secretary": "Ms Moneypenny", "http.route": "/pay"}


def test_secret_keys_are_masked_and_counted(host, telemetry) -> None:
    sink = Sink()
    proc = _redaction(host, telemetry, sink)
    request = logs(
        {"service.name": "pay", "cloud.api_key": "resource-secret"},
        [{"body": "card 4111 1111 1111 1111 declined", "attributes": {**SECRET_ATTRIBUTES, **KEPT_ATTRIBUTES}}],
    )
    batch = batch_of(Signal.LOGS, request)
    proc.consume(batch)
    rl = batch.message.resource_logs[0]
    record = rl.scope_logs[0].log_records[0]
    got = attrs_dict(record.attributes)
    assert {k: got[k] for k in SECRET_ATTRIBUTES} == dict.fromkeys(SECRET_ATTRIBUTES, "***")
    assert {k: got[k] for k in KEPT_ATTRIBUTES} == KEPT_ATTRIBUTES
    assert attrs_dict(rl.resource.attributes)["cloud.api_key"] == "***"
    assert record.body.string_value == "card *** declined"
    assert (
        metric(telemetry, "meshwatch_processor_redactions_total", processor="redaction", signal="logs", reason="key")
        == 7
    )
    assert (
        metric(telemetry, "meshwatch_processor_redactions_total", processor="redaction", signal="logs", reason="value")
        == 1
    )


def test_card_like_numbers_failing_luhn_are_kept(host, telemetry) -> None:
    sink = Sink()
    proc = _redaction(host, telemetry, sink)
    batch = batch_of(Signal.LOGS, logs({"service.name": "a"}, [{"body": "order 1234567890123 shipped"}]))
    proc.consume(batch)
    body = batch.message.resource_logs[0].scope_logs[0].log_records[0].body
    assert body.string_value == "order 1234567890123 shipped"


def test_structured_bodies_and_span_events_are_walked(host, telemetry) -> None:
    sink = Sink()
    proc = _redaction(host, telemetry, sink, action="hash")
    batch = batch_of(
        Signal.LOGS,
        logs({"service.name": "a"}, [{"body": {"user": "bob", "auth": {"password": "pw", "note": "x"}}}]),
    )
    proc.consume(batch)
    body = batch.message.resource_logs[0].scope_logs[0].log_records[0].body
    from meshwatch.collector.otlp_values import any_to_python

    assert any_to_python(body) == {"user": "bob", "auth": {"password": hashlib.sha256(b"pw").hexdigest(), "note": "x"}}

    trace_batch = batch_of(Signal.TRACES, traces({"service.name": "a"}, [span()]))
    event = trace_batch.message.resource_spans[0].scope_spans[0].spans[0].events.add(name="exception")
    event.attributes.add(key="token").value.string_value = "abc"
    proc.consume(trace_batch)
    assert trace_batch.message.resource_spans[0].scope_spans[0].spans[0].events[0].attributes[0].value.string_value == (
        hashlib.sha256(b"abc").hexdigest()
    )


def test_ignored_keys_and_extra_patterns(host, telemetry) -> None:
    sink = Sink()
    proc = _redaction(host, telemetry, sink, ignored_keys=["session_token"], extra_blocked_key_patterns=["ssn"])
    batch = batch_of(Signal.LOGS, logs({"service.name": "a"}, [{"attributes": {"session_token": "t", "ssn": "1"}}]))
    proc.consume(batch)
    got = attrs_dict(batch.message.resource_logs[0].scope_logs[0].log_records[0].attributes)
    assert got == {"session_token": "t", "ssn": "***"}


# --- probabilistic sampler -----------------------------------------------------------------


def test_fnv_hash_matches_the_collector_reference_values() -> None:
    # FNV-1a 32 of the empty input and of "a" are published constants; with seed 0
    # the 4 zero seed bytes come first, as the Collector's i32tob(seed).
    assert probabilistic_sampler.trace_hash(b"", 0, _state=0x811C9DC5) == 0x811C9DC5
    assert probabilistic_sampler.trace_hash(b"a", 0, _state=0x811C9DC5) == 0xE40C292C
    assert probabilistic_sampler._seeded_state(0) == probabilistic_sampler.trace_hash(b"\0\0\0\0", _state=0x811C9DC5)


def test_sampling_keeps_whole_traces_at_the_configured_rate(host, telemetry) -> None:
    sink = Sink()
    config = probabilistic_sampler.SamplerConfig(sampling_percentage=25, hash_seed=7)
    proc = probabilistic_sampler.factory.create(
        settings("probabilistic_sampler", Signal.TRACES, telemetry=telemetry), config, sink
    )
    proc.start(host)
    trace_ids = [os.urandom(16) for _ in range(4000)]
    spans = [span(trace_id=t) for t in trace_ids for _ in range(2)]
    batch = batch_of(Signal.TRACES, traces({"service.name": "a"}, spans))
    proc.consume(batch)
    kept = [s.trace_id for s in batch.message.resource_spans[0].scope_spans[0].spans]
    kept_traces = set(kept)
    assert all(kept.count(t) == 2 for t in list(kept_traces)[:200])  # never half a trace
    assert 0.22 < len(kept_traces) / len(trace_ids) < 0.28
    expected = {t for t in trace_ids if probabilistic_sampler.keeps(t, 25, 7)}
    assert kept_traces == expected
    dropped = 2 * (len(trace_ids) - len(kept_traces))
    assert (
        metric(
            telemetry,
            "meshwatch_processor_filtered_items_total",
            processor="probabilistic_sampler",
            signal="traces",
            reason="sampled_out",
        )
        == dropped
    )


def test_fully_sampled_out_batch_is_not_forwarded_and_logs_fail_closed(host, telemetry) -> None:
    sink = Sink()
    config = probabilistic_sampler.SamplerConfig(sampling_percentage=0)
    proc = probabilistic_sampler.factory.create(
        settings("probabilistic_sampler/z", Signal.LOGS, telemetry=telemetry), config, sink
    )
    proc.start(host)
    batch = batch_of(Signal.LOGS, logs({"service.name": "a"}, [{"trace_id": os.urandom(16)}, {"body": "no trace"}]))
    proc.consume(batch)
    assert sink.batches == []
    labels = {"processor": "probabilistic_sampler/z", "signal": "logs"}
    assert metric(telemetry, "meshwatch_processor_filtered_items_total", **labels, reason="sampled_out") == 1
    assert metric(telemetry, "meshwatch_processor_filtered_items_total", **labels, reason="no_trace_id") == 1
