"""The component contract: one ``make_factory``, typed ``next`` per kind, required capabilities.

* a factory must say whether its component changes batches (no default to get wrong);
* a connector is handed one consumer per output signal, and each feeds only the pipelines
  of that signal (the graph used to give a connector one fan-out across every pipeline
  that read from it, so a connector with two outputs would hand metrics to logs);
* a processor's ``Capabilities`` decide whether a fan-out copies the batch for it;
* a third-party component, written only against the contract and installed as a
  distribution with an entry point, builds and runs in a real collector.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import BaseModel

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import (
    Capabilities,
    Component,
    ComponentId,
    Consumer,
    CreateSettings,
    Host,
    Kind,
    make_factory,
)
from meshwatch.collector.config import ConfigError, load_config
from meshwatch.collector.graph import Graph, GraphError
from meshwatch.collector.otlp_sink import otlp_sink
from meshwatch.collector.registry import Registry
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry

THIRD_PARTY = Path(__file__).parent / "thirdparty"


class _Empty(BaseModel):
    pass


class _Part:
    """A component with nothing to start or stop."""

    def __init__(self, settings: CreateSettings) -> None:
        self.id: ComponentId = settings.id

    def start(self, host: Host) -> None:
        pass

    def shutdown(self, timeout: float) -> None:
        pass


class _Recorder(_Part):
    def __init__(self, settings: CreateSettings) -> None:
        super().__init__(settings)
        self.batches: list[Batch] = []

    def consume(self, batch: Batch) -> None:
        self.batches.append(batch)


class _Fork(_Part):
    """A connector with two outputs: each traces batch becomes one metrics and one logs batch."""

    def __init__(self, settings: CreateSettings, next: Mapping[Signal, Consumer]) -> None:
        super().__init__(settings)
        self.next = next

    def consume(self, batch: Batch) -> None:
        for signal in (Signal.METRICS, Signal.LOGS):
            self.next[signal].consume(Batch.from_bytes(signal, b""))


class _Renamer(_Part):
    def __init__(self, settings: CreateSettings, next: Consumer) -> None:
        super().__init__(settings)
        self.next = next

    def consume(self, batch: Batch) -> None:
        batch.message.resource_spans[0].scope_spans[0].spans[0].name = "renamed"
        batch.mark_modified()
        self.next.consume(batch)


RECORDED: dict[str, _Recorder] = {}


def _record(settings: CreateSettings, config: _Empty) -> Component:
    RECORDED[f"{settings.id}/{settings.signal}"] = recorder = _Recorder(settings)
    return recorder


def _registry(*, renamer_mutates: bool = True) -> Registry:
    return Registry(
        [
            make_factory(
                Kind.EXPORTER,
                "record",
                signals=set(Signal),
                config_model=_Empty,
                create=_record,
                capabilities=Capabilities(mutates_data=False),
            ),
            make_factory(
                Kind.CONNECTOR,
                "fork",
                signals={Signal.TRACES},
                output_signals={Signal.METRICS, Signal.LOGS},
                config_model=_Empty,
                create=lambda settings, config, next: _Fork(settings, next),
                capabilities=Capabilities(mutates_data=False),
            ),
            make_factory(
                Kind.PROCESSOR,
                "renamer",
                signals={Signal.TRACES},
                config_model=_Empty,
                create=lambda settings, config, next: _Renamer(settings, next),
                capabilities=Capabilities(mutates_data=renamer_mutates),
            ),
        ]
    )


def _graph(tmp_path: Path, text: str, registry: Registry) -> Graph:
    path = tmp_path / "collector.yaml"
    path.write_text(f"receivers:\n  otlp:\n    protocols:\n      grpc: {{}}\n{text}")
    return Graph.build(load_config(path, registry), Telemetry())


def _span_batch(name: str = "original") -> Batch:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(name=name, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    return Batch.from_bytes(Signal.TRACES, request.SerializeToString())


def test_make_factory_requires_capabilities_and_says_what_is_missing() -> None:
    common = {"signals": {Signal.TRACES}, "config_model": _Empty, "create": _record}
    with pytest.raises(TypeError, match="capabilities must be a Capabilities value"):
        make_factory(Kind.EXPORTER, "x", capabilities=True, **common)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="say which signals it emits"):
        make_factory(Kind.CONNECTOR, "x", capabilities=Capabilities(mutates_data=False), **common)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="only connectors have output_signals"):
        make_factory(
            Kind.EXPORTER, "x", capabilities=Capabilities(mutates_data=False), output_signals={Signal.LOGS}, **common
        )  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="required keyword-only argument: 'capabilities'"):
        make_factory(Kind.EXPORTER, "x", **common)  # type: ignore[call-overload]


class _NoId:
    """What a create function returns when it forgets the ``id`` a Component has."""

    def start(self, host: object) -> None: ...
    def shutdown(self, timeout: float) -> None: ...
    def consume(self, batch: Batch) -> None: ...


def test_a_created_object_that_is_not_a_component_is_refused_with_what_it_lacks(tmp_path: Path) -> None:
    forgetful = make_factory(
        Kind.EXPORTER,
        "forgetful",
        signals={Signal.TRACES},
        config_model=_Empty,
        create=lambda settings, config: _NoId(),  # type: ignore[arg-type,return-value]
        capabilities=Capabilities(mutates_data=False),
    )
    text = (
        "exporters:\n  {name}: {{}}\nservice:\n  pipelines:\n    traces: {{receivers: [otlp], exporters: [{name}]}}\n"
    )
    with pytest.raises(GraphError, match="cannot create exporter forgetful: _NoId has no id, start or shutdown"):
        _graph(tmp_path, text.format(name="forgetful"), Registry([forgetful]))
    _graph(tmp_path, text.format(name="record"), _registry())  # the control: a component with an id builds


def test_a_connector_feeds_each_output_signal_only_to_the_pipelines_of_that_signal(tmp_path: Path) -> None:
    graph = _graph(
        tmp_path,
        """
connectors:
  fork: {}
exporters:
  record/metrics: {}
  record/logs: {}
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [fork]
    metrics:
      receivers: [fork]
      exporters: [record/metrics]
    logs:
      receivers: [fork]
      exporters: [record/logs]
""",
        _registry(),
    )
    graph.heads["traces"].consume(_span_batch())
    assert [b.signal for b in RECORDED["record/metrics/metrics"].batches] == [Signal.METRICS]
    assert [b.signal for b in RECORDED["record/logs/logs"].batches] == [Signal.LOGS]


@pytest.mark.parametrize("mutates", [True, False])
def test_a_processors_capabilities_decide_whether_a_fan_out_copies_for_it(tmp_path: Path, mutates: bool) -> None:
    """With ``mutates_data=True`` the renaming pipeline gets its own copy; the positive control
    (the same processor declaring False) shows the plain pipeline then sees the rename."""
    graph = _graph(
        tmp_path,
        """
processors:
  renamer: {}
exporters:
  record/plain: {}
  record/renamed: {}
service:
  pipelines:
    traces/plain:
      receivers: [otlp]
      exporters: [record/plain]
    traces/renamed:
      receivers: [otlp]
      processors: [renamer]
      exporters: [record/renamed]
""",
        _registry(renamer_mutates=mutates),
    )
    receiver = graph.receivers[ComponentId("otlp")]
    receiver.consumers[Signal.TRACES].consume(_span_batch())  # the receiver's fan-out over both pipelines
    plain = RECORDED["record/plain/traces"].batches[0]
    renamed = RECORDED["record/renamed/traces"].batches[0]
    assert renamed.message.resource_spans[0].scope_spans[0].spans[0].name == "renamed"
    seen_by_plain = plain.message.resource_spans[0].scope_spans[0].spans[0].name
    assert seen_by_plain == ("original" if mutates else "renamed")


def _third_party_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{THIRD_PARTY}{os.pathsep}{path}" if path else str(THIRD_PARTY)}


def test_an_entry_point_that_is_not_a_factory_is_refused_with_a_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(THIRD_PARTY))
    path = tmp_path / "collector.yaml"
    path.write_text(
        "receivers:\n  otlp: {}\nprocessors:\n  broken: {}\nexporters:\n  debug: {}\n"
        "service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [broken]\n"
        "      exporters: [debug]\n"
    )
    with pytest.raises(ConfigError, match="is not a meshwatch component factory: build it with"):
        load_config(path)


@pytest.mark.integration
def test_a_third_party_component_installed_by_entry_point_runs_in_a_real_collector(collector_factory) -> None:
    with otlp_sink() as sink:
        collector = collector_factory(
            {
                "processors": {"stamp": {"value": "from-a-third-party"}},
                "exporters": {"otlphttp/sink": {"endpoint": sink.url, "sending_queue": {"fsync": "never"}}},
                "service": {
                    "pipelines": {
                        "traces": {"receivers": ["otlp"], "processors": ["stamp"], "exporters": ["otlphttp/sink"]}
                    }
                },
            },
            env=_third_party_env(),
        )
        request = urllib.request.Request(
            f"{collector.http_url}/v1/traces",
            data=_span_batch("third-party").raw,
            headers={"Content-Type": "application/x-protobuf"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        from meshwatch.stack.testing import eventually

        eventually(lambda: sink.spans, timeout=30, what="the stamped span at the sink")
        assert sink.spans[0].name == "third-party"
        assert sink.spans[0].attributes["stamped.by"] == "from-a-third-party"
        # It counted through the telemetry its create settings handed it: served with the collector's own.
        assert collector.metric("example_stamped_spans_total", processor="stamp") == 1
