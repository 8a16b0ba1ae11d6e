"""The prometheusremotewrite exporter: translation, and samples written into the real Prometheus."""

from __future__ import annotations

import time
import uuid

import cramjam
import httpx
import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from meshwatch.collector.exporters import prometheusremotewrite as prw
from meshwatch.collector.exporters._remote_write_pb import WriteRequest
from meshwatch.collector.sender import TransientError
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry
from meshwatch.stack import free_port
from meshwatch.stack.testing import eventually

from ._otlp import batch_of
from .test_prometheus_exporter import DELTA, NS, counter, histogram, request


def _labels(series) -> dict[str, str]:
    return {label.name: label.value for label in series.labels}


def test_translation_names_labels_histograms_and_target_info() -> None:
    now = time.time_ns()
    config = prw.RemoteWriteConfig(endpoint="http://127.0.0.1:1/api/v1/write")
    req = request(
        [
            counter("orders.placed", 3, t=now, start=now - NS),
            histogram("pay.dur", [1, 2, 0, 1], t=now, start=now - NS, exemplar=(b"\x01" * 16, b"\x02" * 8, 0.07)),
            counter("jobs.done", 1, t=now, start=now - NS, temporality=DELTA),
        ]
    )
    write, written, letters = prw.translate(req, config)
    series = {(_labels(s)["__name__"], _labels(s).get("le", "")): s for s in write.timeseries}
    total = series[("orders_placed_total", "")]
    assert _labels(total)["job"] == "shop/checkout" and _labels(total)["instance"] == "pod-1"
    assert [label.name for label in total.labels] == sorted(label.name for label in total.labels)
    assert total.samples[0].value == 3 and total.samples[0].timestamp == now // 1_000_000
    assert series[("pay_dur_seconds_bucket", "0.1")].samples[0].value == 3
    assert series[("pay_dur_seconds_bucket", "+Inf")].samples[0].value == 4
    assert series[("pay_dur_seconds_bucket", "0.1")].exemplars[0].labels[0].value == "01" * 16
    assert _labels(series[("target_info", "")])["host_name"] == "node-7"
    assert written == 2 and len(letters) == 1 and letters[0]["metric"] == "jobs.done"


def test_unreachable_endpoint_is_transient() -> None:
    sender = prw.RemoteWriteSender(
        prw.RemoteWriteConfig(endpoint=f"http://127.0.0.1:{free_port()}/api/v1/write"), Telemetry()
    )
    sender.start(None)
    now = time.time_ns()
    with pytest.raises(TransientError):
        sender.send(batch_of(Signal.METRICS, request([counter("x", 1, t=now, start=now - NS)])))


def test_snappy_block_round_trip() -> None:
    write = WriteRequest()
    write.timeseries.add().labels.add(name="__name__", value="up")
    data = write.SerializeToString()
    assert bytes(cramjam.snappy.decompress_raw(cramjam.snappy.compress_raw(data))) == data


@pytest.mark.integration
def test_samples_are_written_into_prometheus(prometheus) -> None:
    sender = prw.RemoteWriteSender(prw.RemoteWriteConfig(endpoint=f"{prometheus.url}/api/v1/write"), Telemetry())
    sender.start(None)
    service = f"rw-{uuid.uuid4().hex[:6]}"
    now = time.time_ns()
    gauge = Metric(name="rw.temperature", unit="Cel")
    gauge.gauge.data_points.add(time_unix_nano=now, as_double=21.5)
    resource = {"service.name": service, "service.instance.id": "r1", "deployment.environment.name": "rw"}
    req = request(
        [
            counter("rw.requests", 12, t=now, start=now - NS),
            histogram("rw.dur", [1, 1, 1, 1], t=now, start=now - NS),
            gauge,
        ],
        resource=resource,
    )
    result = sender.send(batch_of(Signal.METRICS, req))
    assert result.rejected == 0

    def query(promql: str) -> list:
        return httpx.get(f"{prometheus.url}/api/v1/query", params={"query": promql}, timeout=10).json()["data"][
            "result"
        ]

    total = eventually(
        lambda: query(f'rw_requests_total{{job="{service}"}}'), timeout=30, what="remote-written counter"
    )
    assert float(total[0]["value"][1]) == 12 and total[0]["metric"]["instance"] == "r1"
    assert float(query(f'rw_temperature_celsius{{job="{service}"}}')[0]["value"][1]) == 21.5
    assert len(query(f'rw_dur_seconds_bucket{{job="{service}"}}')) == 4
    assert query(f'target_info{{job="{service}"}}')[0]["metric"]["deployment_environment_name"] == "rw"
    sender.shutdown()


def test_config_requires_an_url() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        prw.RemoteWriteConfig()
    assert prw.factory.signals == frozenset({Signal.METRICS})
