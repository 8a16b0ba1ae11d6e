"""Where sampling goes in the graph: the ``forward`` connector, and the warning for span metrics after a sampler.

The shipped config counts spans in ``spanmetrics``/``servicegraph`` in the first traces
pipeline and forwards every span to ``traces/sampled``, where ``tail_sampling`` runs. A
config that samples first gets a warning that names the pipeline and connector (the
positive control: the same config with the sampler moved up).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import Refused
from meshwatch.collector.config import ConfigError, load_config
from meshwatch.collector.graph import Graph
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry

SHIPPED = Path(__file__).parents[3] / "collector" / "collector.yaml"


def _load(tmp_path: Path, config: dict) -> object:
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


def _misplaced() -> dict:
    """The shipped config with tail sampling moved in front of spanmetrics and servicegraph."""
    config = yaml.safe_load(SHIPPED.read_text())
    pipelines = config["service"]["pipelines"]
    del pipelines["traces/sampled"], config["connectors"]["forward/sampled"]
    pipelines["traces"] = {
        "receivers": ["otlp"],
        "processors": ["memory_limiter", "tail_sampling"],
        "exporters": ["otlp/jaeger", "spanmetrics", "servicegraph"],
    }
    return config


def test_the_shipped_config_counts_spans_before_tail_sampling() -> None:
    config = load_config(SHIPPED)
    pipes = {p.name: p for p in config.pipelines}
    first, sampled = pipes["traces"], pipes["traces/sampled"]
    assert [str(c) for c in first.receivers] == ["otlp"]
    assert "tail_sampling" not in {c.type for c in first.processors}
    assert {"spanmetrics", "servicegraph", "forward"} <= {c.type for c in first.exporters}
    assert [str(c) for c in sampled.receivers] == ["forward/sampled"]
    assert [c.type for c in sampled.processors] == ["tail_sampling"]
    assert [str(c) for c in sampled.exporters] == ["otlp/jaeger"]
    assert not any("gets traces after" in w for w in config.warnings)


def test_span_metrics_after_a_sampler_are_warned_about(tmp_path: Path) -> None:
    warnings = _load(tmp_path, _misplaced()).warnings  # type: ignore[attr-defined]
    placement = [w for w in warnings if "gets traces after" in w]
    assert len(placement) == 2, warnings
    assert any("service.pipelines.traces: spanmetrics gets traces after tail_sampling" in w for w in placement)
    assert any("servicegraph gets traces after tail_sampling" in w for w in placement)


def test_the_warning_follows_connectors_downstream_of_the_sampler(tmp_path: Path) -> None:
    config = yaml.safe_load(SHIPPED.read_text())
    pipelines = config["service"]["pipelines"]
    # spanmetrics moved behind tail_sampling, through the forward connector.
    pipelines["traces"]["exporters"] = ["servicegraph", "forward/sampled"]
    pipelines["traces/sampled"]["exporters"] = ["otlp/jaeger", "spanmetrics"]
    warnings = _load(tmp_path, config).warnings  # type: ignore[attr-defined]
    assert [w.split(": ", 1)[1] for w in warnings if "gets traces after" in w] == [
        "service.pipelines.traces/sampled: spanmetrics gets traces after tail_sampling, so its metrics count "
        "only the kept ones; feed it from a pipeline before sampling (docs/sampling.md)"
    ]


class _Recorder:
    mutates_data = False

    def __init__(self, refuse: bool = False) -> None:
        self.batches: list[Batch] = []
        self.refuse = refuse

    def consume(self, batch: Batch) -> None:
        if self.refuse:
            raise Refused("queue_full", "full", retryable=True)
        self.batches.append(batch)


def _batch() -> Batch:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add().name = "GET /"
    return Batch.from_bytes(Signal.TRACES, request.SerializeToString())


def test_forward_hands_the_batch_on_unchanged_and_passes_refusals_back() -> None:
    from meshwatch.collector.component import ComponentId, CreateSettings
    from meshwatch.collector.connectors.forward import factory

    downstream = _Recorder()
    connector = factory.create(
        CreateSettings(ComponentId("forward"), Signal.TRACES, Telemetry()), None, {Signal.TRACES: downstream}
    )
    batch = _batch()
    connector.consume(batch)  # type: ignore[attr-defined]
    assert downstream.batches == [batch]
    refusing = factory.create(
        CreateSettings(ComponentId("forward"), Signal.TRACES, Telemetry()),
        None,
        {Signal.TRACES: _Recorder(refuse=True)},
    )
    with pytest.raises(Refused):
        refusing.consume(_batch())  # type: ignore[attr-defined]


def test_forward_feeds_only_pipelines_of_its_own_signal(tmp_path: Path) -> None:
    base = {
        "receivers": {"otlp": None},
        "exporters": {"debug": {}, "debug/two": {}},
        "connectors": {"forward": {}},
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "exporters": ["forward"]},
                "traces/next": {"receivers": ["forward"], "exporters": ["debug"]},
                "metrics": {"receivers": ["otlp"], "exporters": ["forward"]},
                "metrics/next": {"receivers": ["forward"], "exporters": ["debug/two"]},
            }
        },
    }
    graph = Graph.build(_load(tmp_path, base), Telemetry())  # type: ignore[arg-type]
    traces = graph.connectors[(next(c for c, _ in graph.connectors), Signal.TRACES)]
    assert traces.next is graph.heads["traces/next"]  # type: ignore[attr-defined]
    metrics = graph.connectors[(next(c for c, _ in graph.connectors), Signal.METRICS)]
    assert metrics.next is graph.heads["metrics/next"]  # type: ignore[attr-defined]
    # A logs pipeline fed by a forward nothing sends logs to is refused, with the reason.
    base["service"]["pipelines"]["logs"] = {"receivers": ["forward"], "exporters": ["debug"]}
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, base)
    assert any(
        "hands on the signal it receives, but logs pipelines use it as a receiver and none as an exporter" in p
        for p in error.value.problems
    ), error.value.problems
    # ... and so is a logs pipeline sending to a forward no logs pipeline receives from.
    base["service"]["pipelines"]["logs"] = {"receivers": ["otlp"], "exporters": ["forward"]}
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, base)
    assert any("but logs pipelines use it as an exporter and none as a receiver" in p for p in error.value.problems)
