"""Self-telemetry has one owner per collector: the service's ``Telemetry``, handed to every
component in its ``CreateSettings``.

Two collectors run in this one test process (as several tests of the suite do), built from
the same config, so their components have the same ids and labels. Each must serve, on its
own metrics address, only what went through it; and no registry in the process other than
the two collectors' may hold a series of their components (a module-global fallback
registry, or instruments created before a component is started and rebound later, would).
"""

from __future__ import annotations

import ast
import gc
import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from meshwatch.collector.config import load_config
from meshwatch.collector.service import Collector
from meshwatch.collector.telemetry import Telemetry, TelemetryClash
from meshwatch.collector.testing import free_port, scrape

COLLECTOR_SRC = Path(__file__).resolve().parents[3] / "collector" / "src" / "meshwatch" / "collector"


class _Running:
    def __init__(self, collector: Collector, http: str, metrics: str) -> None:
        self.collector = collector
        self.http = http
        self.metrics = metrics

    def send(self, requests: int, spans: int, tag: str) -> None:
        """``requests`` OTLP/HTTP requests of ``spans`` spans, each with a ``password`` attribute."""
        for _ in range(requests):
            body = _trace(spans, service=f"svc-{tag}")
            request = urllib.request.Request(
                f"{self.http}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200

    def sample(self, name: str, **labels: str) -> float:
        """One sample from the collector's own metrics address, as Prometheus would scrape it (0 if absent)."""
        wanted = tuple(sorted(labels.items()))
        return scrape(self.metrics).get((name, wanted), 0.0)


def _trace(spans: int, service: str) -> bytes:
    """One trace of ``spans`` server spans, each with a ``password`` attribute (redacted by key)."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = service
    scope = resource_spans.scope_spans.add()
    trace_id = os.urandom(16)
    for i in range(spans):
        span = scope.spans.add(name="GET /", trace_id=trace_id, span_id=os.urandom(8), kind=2)
        span.start_time_unix_nano = 1_700_000_000_000_000_000 + i
        span.end_time_unix_nano = span.start_time_unix_nano + 1_000_000
        span.attributes.add(key="password").value.string_value = "hunter2"
    return request.SerializeToString()


def _config(tmp_path: Path, tag: str, http: int, metrics: int) -> Path:
    config = {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{http}"}}}},
        "processors": {
            "memory_limiter": {"limit_mib": 100_000, "check_interval": "1s"},
            "redaction": {},
            f"probabilistic_sampler/{tag}": {"sampling_percentage": 0},
            f"tail_sampling/{tag}": {"decision_wait": "30s", "policies": [{"name": "all", "type": "always_sample"}]},
        },
        "connectors": {f"servicegraph/{tag}": {}},
        "exporters": {"debug": {}},
        "service": {
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["memory_limiter", "redaction"],
                    "exporters": [f"servicegraph/{tag}", "debug"],
                },
                "traces/sampled": {
                    "receivers": ["otlp"],
                    "processors": [f"probabilistic_sampler/{tag}"],
                    "exporters": ["debug"],
                },
                "traces/tail": {"receivers": ["otlp"], "processors": [f"tail_sampling/{tag}"], "exporters": ["debug"]},
                "metrics": {"receivers": [f"servicegraph/{tag}"], "exporters": ["debug"]},
            },
            "telemetry": {"metrics": {"address": f"127.0.0.1:{metrics}"}},
            "storage": {"directory": str(tmp_path / "storage")},
        },
    }
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[str, _Running, _Running]]:
    """Two in-process collectors from one config text (the same component ids), started."""
    tag = uuid.uuid4().hex[:10]
    running = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        http, metrics = free_port(), free_port()
        collector = Collector(load_config(_config(tmp_path / name, tag, http, metrics)))
        collector.start()
        running.append(_Running(collector, f"http://127.0.0.1:{http}", f"http://127.0.0.1:{metrics}/metrics"))
    try:
        yield tag, running[0], running[1]
    finally:
        for each in running:
            each.collector.stop(5)


def test_two_collectors_in_one_process_each_serve_only_their_own_series(two) -> None:
    tag, a, b = two
    a.send(requests=3, spans=2, tag="a")  # 6 spans
    b.send(requests=5, spans=2, tag="b")  # 10 spans
    for running, spans in ((a, 6), (b, 10)):
        assert (
            running.sample(
                "meshwatch_receiver_accepted_items_total", receiver="otlp", transport="http", signal="traces"
            )
            == spans
        )
        # a processor's own instrument, registered through the settings' telemetry
        assert (
            running.sample("meshwatch_processor_redactions_total", processor="redaction", signal="traces", reason="key")
            == spans
        )
        # a processor counting on a contract instrument
        assert (
            running.sample(
                "meshwatch_processor_filtered_items_total",
                processor=f"probabilistic_sampler/{tag}",
                signal="traces",
                reason="sampled_out",
            )
            == spans
        )
        # a gauge read at scrape time from the component that registered it (its own undecided traces)
        assert running.sample("meshwatch_processor_tail_sampling_traces_held", processor=f"tail_sampling/{tag}") == (
            3 if running is a else 5
        )
        # a connector's instrument, labelled from creation
        assert (
            running.sample("meshwatch_connector_servicegraph_dropped_spans_total", connector=f"servicegraph/{tag}") == 0
        )


def _labelled_with(registry: CollectorRegistry, tag: str) -> list[str]:
    return [
        f"{sample.name}{sample.labels}"
        for family in registry.collect()
        for sample in family.samples
        if any(tag in value for value in sample.labels.values())
    ]


def test_no_registry_but_the_two_collectors_holds_a_series_of_their_components(two) -> None:
    tag, a, b = two
    a.send(requests=1, spans=1, tag="a")
    owners = {id(a.collector.telemetry.registry), id(b.collector.telemetry.registry)}
    elsewhere = {
        id(obj): _labelled_with(obj, tag)
        for obj in gc.get_objects()
        if isinstance(obj, CollectorRegistry) and id(obj) not in owners
    }
    elsewhere = {key: series for key, series in elsewhere.items() if series}
    assert elsewhere == {}, "series of this test's components in a registry no collector owns"
    for running in (a, b):
        assert _labelled_with(running.collector.telemetry.registry, tag), "each owner holds its components' series"


def test_a_component_asking_for_a_contract_name_gets_the_contracts_instrument_and_one_series() -> None:
    """What ``_names_to_collectors`` was read for: a component registering a name the core also
    has must share the core's family, not make a second one (which prometheus-client refuses)."""
    telemetry = Telemetry()
    mine = telemetry.counter(
        "meshwatch_processor_filtered_items", "Items removed on purpose", ["processor", "signal", "reason"]
    )
    assert mine is telemetry.processor_filtered
    mine.labels("p", "traces", "sampled_out").inc(2)
    telemetry.filtered("p", "traces", "sampled_out", 3)
    labels = {"processor": "p", "signal": "traces", "reason": "sampled_out"}
    assert telemetry.registry.get_sample_value("meshwatch_processor_filtered_items_total", labels) == 5
    assert telemetry.counter("x_things_total", "with the suffix", ["a"]) is telemetry.counter("x_things", "", ["a"])
    with pytest.raises(TelemetryClash, match="meshwatch_processor_filtered_items is a counter with labels"):
        telemetry.counter("meshwatch_processor_filtered_items", "other labels", ["processor"])
    with pytest.raises(TelemetryClash, match="asked for as a gauge"):
        telemetry.gauge("meshwatch_processor_filtered_items", "another kind", ["processor", "signal", "reason"])
    # Another collector's telemetry is another owner: the same name again, its own family.
    other = Telemetry()
    assert other.processor_filtered is not telemetry.processor_filtered
    assert other.registry.get_sample_value("meshwatch_processor_filtered_items_total", labels) is None


# --- the source: no private prometheus-client attributes, no module-global instruments ------

#: prometheus-client's CollectorRegistry internals (not its API).
PRIVATE = ("_names_to_collectors", "_collector_to_names", "_get_names")
INSTRUMENTS = {"CollectorRegistry", "Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}


def _module_level_instruments(source: str) -> list[str]:
    """Module-level assignments whose value calls a prometheus-client registry or instrument."""
    found = []
    for node in ast.parse(source).body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Call):
            func = value.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in INSTRUMENTS:
                found.append(f"line {node.lineno}: {name}(...)")
    return found


def test_the_collector_reads_no_private_prometheus_client_attribute_and_has_no_module_global_instrument() -> None:
    planted = "from prometheus_client import CollectorRegistry\nFALLBACK = CollectorRegistry()\n"
    assert _module_level_instruments(planted) == ["line 2: CollectorRegistry(...)"]  # the check catches one
    private, globals_ = [], []
    for path in sorted(COLLECTOR_SRC.rglob("*.py")):
        text = path.read_text()
        private += [f"{path.relative_to(COLLECTOR_SRC)}: {name}" for name in PRIVATE if name in text]
        globals_ += [f"{path.relative_to(COLLECTOR_SRC)} {where}" for where in _module_level_instruments(text)]
    assert private == []
    assert globals_ == []
