"""Config loading: every mistake is reported with its file, line and key; nothing starts on a bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshwatch.collector.batch import Batch
from meshwatch.collector.cli import main
from meshwatch.collector.component import Kind
from meshwatch.collector.config import ConfigError, load_config
from meshwatch.collector.graph import Graph
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry

DEFAULT_CONFIG = Path(__file__).parents[3] / "collector" / "collector.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(text)
    return path


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, text))
    return error.value.problems


GOOD = """\
receivers:
  otlp:
exporters:
  debug: {}
  otlp/jaeger:
    endpoint: 127.0.0.1:4317
    timeout: 5s
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [otlp/jaeger, debug]
"""


def test_a_good_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD))
    (pipeline,) = config.pipelines
    assert pipeline.signal is Signal.TRACES and [str(e) for e in pipeline.exporters] == ["otlp/jaeger", "debug"]
    exporter = config.components[(Kind.EXPORTER, pipeline.exporters[0])].config
    assert exporter.timeout == 5.0 and exporter.sending_queue.fsync == "interval"
    receiver = config.components[(Kind.RECEIVER, pipeline.receivers[0])].config
    assert receiver.protocols.grpc.endpoint == "127.0.0.1:4317"  # loopback by default
    assert receiver.protocols.http.endpoint == "127.0.0.1:4318"


def test_unknown_key_names_the_line_and_suggests_the_right_one(tmp_path: Path) -> None:
    problems = _problems(tmp_path, GOOD.replace("    endpoint: 127.0.0.1:4317", "    endpont: 127.0.0.1:4317"))
    assert (
        f"{tmp_path}/collector.yaml:6: exporters.otlp/jaeger.endpont: unknown key (did you mean 'endpoint'?)"
        in problems
    )
    assert any(p.endswith("exporters.otlp/jaeger.endpoint: required key is missing") for p in problems)
    # the pipeline that uses the broken exporter is not reported a second time
    assert not any("service.pipelines" in p for p in problems)


def test_pipeline_references_and_signals_are_checked(tmp_path: Path) -> None:
    text = GOOD.replace("exporters: [otlp/jaeger, debug]", "exporters: [otlp/jaegr, prometheus]")
    text = text.replace("  debug: {}", "  prometheus: {}")
    problems = _problems(tmp_path, text)
    assert any(
        ":12: service.pipelines.traces.exporters: 'otlp/jaegr' is not defined" in p
        and "did you mean 'otlp/jaeger'" in p
        for p in problems
    )
    assert any("'prometheus' does not support traces (only metrics)" in p for p in problems)


def test_unknown_component_type_lists_the_known_ones(tmp_path: Path) -> None:
    problems = _problems(tmp_path, GOOD.replace("  debug: {}", "  jaeger_thrift: {}").replace(", debug]", "]"))
    assert any(
        "exporters.jaeger_thrift: unknown exporter type 'jaeger_thrift' (known:" in p and "otlp" in p for p in problems
    )


def test_connectors_must_join_two_pipelines_of_compatible_signals(tmp_path: Path) -> None:
    base = GOOD.replace("service:", "connectors:\n  spanmetrics: {}\nservice:")
    only_exporter = base.replace("exporters: [otlp/jaeger, debug]", "exporters: [otlp/jaeger, spanmetrics]")
    assert any(
        "used as an exporter but no pipeline uses it as a receiver" in p for p in _problems(tmp_path, only_exporter)
    )
    wrong_signal = only_exporter + "    logs:\n      receivers: [spanmetrics]\n      exporters: [debug]\n"
    assert any(
        "connector 'spanmetrics' cannot be a receiver of a logs pipeline" in p
        for p in _problems(tmp_path, wrong_signal)
    )


def test_environment_substitution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAEGER_ADDR", "10.0.0.1:4317")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    text = GOOD.replace("127.0.0.1:4317", "${env:JAEGER_ADDR}").replace("5s", "${NOT_SET_ANYWHERE:-7s}")
    config = load_config(_write(tmp_path, text))
    exporter = next(c.config for (k, _), c in config.components.items() if k is Kind.EXPORTER and c.id.name == "jaeger")
    assert exporter.endpoint == "10.0.0.1:4317" and exporter.timeout == 7.0
    problems = _problems(tmp_path, GOOD.replace("127.0.0.1:4317", "${env:NOT_SET_ANYWHERE}"))
    assert any(
        ":6: exporters.otlp/jaeger.endpoint: environment variable NOT_SET_ANYWHERE is not set" in p for p in problems
    )


def test_secrets_are_not_echoed_in_errors(tmp_path: Path) -> None:
    text = GOOD.replace("  otlp:\n", "  otlp:\n    auth: {bearer_token: [s3cr3t-value]}\n")
    problems = _problems(tmp_path, text)
    assert any("receivers.otlp.auth.bearer_token" in p for p in problems)
    assert not any("s3cr3t-value" in p for p in problems)


def test_yaml_syntax_errors_and_duplicate_keys(tmp_path: Path) -> None:
    assert _problems(tmp_path, "receivers: [\n")[0].startswith(f"{tmp_path}/collector.yaml:2: not valid YAML")
    dup = GOOD.replace("  debug: {}\n", "  debug: {}\n  debug: {verbosity: detailed}\n")
    assert any(":5: exporters.debug: key given twice" in p for p in _problems(tmp_path, dup))


def test_validate_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", str(_write(tmp_path, GOOD))]) == 0
    assert "valid" in capsys.readouterr().out
    bad = _write(tmp_path, GOOD.replace("receivers: [otlp]", "receivers: [otlp/missing]"))
    assert main(["validate", "--config", str(bad)]) == 2
    assert "'otlp/missing' is not defined under receivers/connectors" in capsys.readouterr().err
    assert main(["validate", "--config", str(tmp_path / "nope.yaml")]) == 2


def test_the_shipped_default_config_is_valid() -> None:
    config = load_config(DEFAULT_CONFIG)
    assert {p.name for p in config.pipelines} == {"traces", "traces/sampled", "metrics", "logs"}
    assert config.warnings == []  # in particular no span metrics after sampling


class _Recorder:
    mutates_data = False

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def consume(self, batch: Batch) -> None:
        self.batches.append(batch)


class _Renamer(_Recorder):
    """Changes the batch in place, as an attributes processor would."""

    mutates_data = True

    def __init__(self, next_consumer) -> None:
        super().__init__()
        self.next = next_consumer

    def consume(self, batch: Batch) -> None:
        batch.message.resource_spans[0].scope_spans[0].spans[0].name = "renamed"
        batch.mark_modified()
        self.next.consume(batch)


def test_fan_out_copies_only_for_a_pipeline_that_changes_data(tmp_path: Path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from meshwatch.collector.graph import FanOut

    plain, changed = _Recorder(), _Recorder()
    fan = FanOut([plain, _Renamer(changed)], [False, True])
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add().name = "original"
    batch = Batch.from_bytes(Signal.TRACES, request.SerializeToString())
    fan.consume(batch)
    assert plain.batches[0] is batch
    assert plain.batches[0].message.resource_spans[0].scope_spans[0].spans[0].name == "original"
    assert changed.batches[0].message.resource_spans[0].scope_spans[0].spans[0].name == "renamed"


def test_graph_wires_connectors_and_shares_exporters_per_signal(tmp_path: Path) -> None:
    config = load_config(DEFAULT_CONFIG)
    graph = Graph.build(config, Telemetry())
    assert {(str(c), str(s)) for c, s in graph.exporters} == {
        ("otlp/jaeger", "traces"),
        ("prometheus", "metrics"),
        ("elasticsearch", "logs"),
    }
    assert {str(c) for c, _ in graph.connectors} == {"spanmetrics", "servicegraph", "forward/sampled"}
    assert len(graph.processors) == 7  # two per pipeline, one instance per pipeline; tail_sampling once
    assert [str(r) for r in graph.receivers] == ["otlp"]


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("1m30s", 90.0), ("200ms", 0.2), (".5s", 0.5), ("5 s", 5.0), ("1h", 3600.0), ("5", 5.0), (7, 7)],
)
def test_every_duration_key_reads_go_durations_alike(tmp_path: Path, written: object, seconds: float) -> None:
    """One parser: the service's ``shutdown_timeout`` and an exporter's ``metric_expiration`` agree.

    With two parsers ``metric_expiration: 1m30s`` was accepted and ``shutdown_timeout: 1m30s`` refused.
    """
    prometheus = f"exporters:\n  debug: {{}}\n  prometheus:\n    metric_expiration: {written}"
    text = GOOD.replace("exporters:\n  debug: {}", prometheus)
    text += f"  shutdown_timeout: {written}\n"
    config = load_config(_write(tmp_path, text))
    exporter = next(c.config for (_, cid), c in config.components.items() if str(cid) == "prometheus")
    assert config.service.shutdown_timeout == seconds
    assert exporter.metric_expiration == seconds


def test_a_bad_duration_is_refused_with_examples(tmp_path: Path) -> None:
    problems = _problems(tmp_path, GOOD + "  shutdown_timeout: 5x\n")
    assert any("'5x' is not a duration" in p and "1h30m" in p for p in problems), problems


AGENT = """\
receivers:
  otlp: {}
exporters:
  otlp:
    endpoint: http://127.0.0.1:4317
    tls: {insecure: true}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [otlp]}
"""


def test_an_otlp_receiver_and_an_otlp_exporter_in_one_pipeline_are_not_a_loop(tmp_path: Path) -> None:
    """The usual agent config (found by a test that wrote it): two components that share a name."""
    config = load_config(_write(tmp_path, AGENT))
    assert [str(c) for c in config.pipelines[0].exporters] == ["otlp"]


def test_a_real_connector_loop_is_still_refused(tmp_path: Path) -> None:
    """The positive control of the test above: pipelines that feed each other through a connector."""
    from pydantic import BaseModel

    from meshwatch.collector.component import Capabilities, make_factory
    from meshwatch.collector.registry import Registry

    class _Empty(BaseModel):
        pass

    relay = make_factory(
        Kind.CONNECTOR,
        "relay",
        signals={Signal.TRACES},
        output_signals={Signal.TRACES},
        config_model=_Empty,
        create=lambda settings, config, next: None,
        capabilities=Capabilities(mutates_data=False),
    )
    path = _write(
        tmp_path,
        """\
receivers:
  otlp: {}
connectors:
  relay: {}
  relay/back: {}
exporters:
  debug: {}
service:
  pipelines:
    traces: {receivers: [otlp, relay/back], exporters: [relay]}
    traces/b: {receivers: [relay], exporters: [relay/back, debug]}
""",
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, Registry([relay]))
    assert any("connector loop" in p for p in error.value.problems), error.value.problems
