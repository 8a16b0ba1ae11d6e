"""The kafka components' wire format and config, without a broker: partitioner, record cuts, encodings."""

from __future__ import annotations

import os

import orjson
import pytest
from pydantic import ValidationError

from meshwatch.collector._kafka import fit, marshal, sarama_partition, split_by_trace, unmarshal
from meshwatch.collector._kafka.partition import fnv1a_32
from meshwatch.collector.exporters.kafka import KafkaExporterConfig, producer_config
from meshwatch.collector.receivers.kafka import KafkaReceiverConfig, consumer_config
from meshwatch.collector.signals import Signal, count_items

from ._otlp import span, traces


def test_fnv1a_matches_the_published_test_vectors() -> None:
    # From the FNV reference (Fowler/Noll/Vo), 32-bit FNV-1a.
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_sarama_partition_reads_the_hash_as_signed_int32_like_go() -> None:
    # fnv1a("a") = 0xE40C292C is -468_965_076 as int32: Go's % keeps the sign (-6), then abs;
    # reading the hash unsigned (as librdkafka's partitioners may) would give 3_826_002_220 % 7 = 5.
    assert sarama_partition(b"a", 7) == 6
    assert sarama_partition(b"", 10) == 5  # int32(0x811C9DC5) = -2_128_831_035
    assert {sarama_partition(os.urandom(16).hex().encode(), 4) for _ in range(200)} == {0, 1, 2, 3}


def _three_traces() -> tuple[object, dict[bytes, int]]:
    ids = [os.urandom(16) for _ in range(3)]
    request = traces({"service.name": "a"}, [span(f"a{i}", trace_id=ids[i % 3]) for i in range(7)], scope="s1")
    more = traces({"service.name": "b"}, [span(f"b{i}", trace_id=ids[i % 2]) for i in range(4)], scope="s2")
    request.MergeFrom(more)
    expected = {ids[0]: 3 + 2, ids[1]: 2 + 2, ids[2]: 2}
    return request, expected


def test_split_by_trace_gives_one_request_per_trace_keeping_resource_and_scope() -> None:
    request, expected = _three_traces()
    parts = split_by_trace(request)
    assert [trace_id for trace_id, _ in parts] == list(expected)  # order of first appearance
    for trace_id, part in parts:
        assert count_items(Signal.TRACES, part) == expected[trace_id]
        for rs in part.resource_spans:
            service = rs.resource.attributes[0].value.string_value
            for ss in rs.scope_spans:
                assert ss.scope.name == {"a": "s1", "b": "s2"}[service]
                assert all(s.trace_id == trace_id for s in ss.spans)
                assert all(s.name.startswith(service) for s in ss.spans)


def test_fit_cuts_until_every_part_fits_and_keeps_every_span() -> None:
    request = traces({"service.name": "a"}, [span(f"s{i}", attributes={"pad": "x" * 400}) for i in range(100)])
    size = request.ByteSize()
    fitting, alone = fit(Signal.TRACES, request, size // 5, lambda m: m.SerializeToString())
    assert not alone and len(fitting) >= 5
    assert all(len(value) <= size // 5 for _, value in fitting)
    names = [s.name for part, _ in fitting for rs in part.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert sorted(names) == sorted(f"s{i}" for i in range(100))
    assert all(part.resource_spans[0].resource.attributes[0].key == "service.name" for part, _ in fitting)


def test_fit_sets_aside_a_single_span_too_large_on_its_own() -> None:
    request = traces({"service.name": "a"}, [span("small"), span("huge", attributes={"blob": "x" * 50_000})])
    fitting, alone = fit(Signal.TRACES, request, 10_000, lambda m: m.SerializeToString())
    assert [p.resource_spans[0].scope_spans[0].spans[0].name for p, _ in fitting] == ["small"]
    assert [p.resource_spans[0].scope_spans[0].spans[0].name for p, _ in alone] == ["huge"]


def test_otlp_json_spells_ids_in_hex_and_round_trips() -> None:
    request = traces({"service.name": "a"}, [span("GET /x", parent=os.urandom(8), attributes={"n": 3, "ok": True})])
    value = marshal(request, "otlp_json")
    doc = orjson.loads(value)
    sent = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    original = request.resource_spans[0].scope_spans[0].spans[0]
    assert sent["traceId"] == original.trace_id.hex() and sent["parentSpanId"] == original.parent_span_id.hex()
    assert sent["kind"] == original.kind  # enums as integers, as OTLP/JSON requires
    assert unmarshal(Signal.TRACES, value, "otlp_json") == request
    assert unmarshal(Signal.TRACES, marshal(request, "otlp_proto"), "otlp_proto") == request


def test_exporter_defaults_are_contribs() -> None:
    config = KafkaExporterConfig()
    assert config.signal_topic(Signal.TRACES) == ("otlp_spans", "otlp_proto")
    assert config.signal_topic(Signal.METRICS) == ("otlp_metrics", "otlp_proto")
    assert config.signal_topic(Signal.LOGS) == ("otlp_logs", "otlp_proto")
    assert config.brokers == ["localhost:9092"] and config.client_id == "otel-collector"
    assert config.producer.max_message_bytes == 1_000_000
    properties = producer_config(KafkaExporterConfig(producer={"compression": "zstd", "required_acks": -1}))
    assert properties["compression.type"] == "zstd" and properties["acks"] == "all"


def test_exporter_refuses_unknown_keys_and_codecs() -> None:
    with pytest.raises(ValidationError, match="compression"):
        KafkaExporterConfig(producer={"compression": "brotli"})
    with pytest.raises(ValidationError, match="topik"):
        KafkaExporterConfig(traces={"topik": "x"})


def test_receiver_offsets_are_stored_by_hand_and_marking_before_is_refused() -> None:
    config = KafkaReceiverConfig(traces={"topics": ["a", "b"], "encoding": "otlp_json"})
    assert config.topic_encoding(Signal.TRACES) == (["a", "b"], "otlp_json")
    assert config.topic_encoding(Signal.LOGS) == (["otlp_logs"], "otlp_proto")
    properties = consumer_config(config)
    assert properties["enable.auto.offset.store"] is False
    assert properties["group.id"] == "otel-collector"
    assert properties["partition.assignment.strategy"] == "cooperative-sticky"
    for marking, word in (({"after": False}, "after"), ({"on_error": True}, "on_error")):
        with pytest.raises(ValidationError, match=word):
            KafkaReceiverConfig(message_marking=marking)
