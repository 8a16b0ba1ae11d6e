"""Micro-benchmark: part B's processors and the Prometheus exporter, µs of collector CPU per item.

Processors run on 512-span requests (≈10 attributes per span, from
components_spanmetrics.realistic_request); the Prometheus exporter on a request of
512 histogram and counter points. For the exporter, ``consume`` (what the receive
path pays) and the background fold are shown apart. Every case is repeated, interleaved;
medians and spread go to ``--output`` (default ``bench/results/components-processors.json``)
with the commit.

    .venv/bin/python bench/collector/components_processors.py [--rounds 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _results import RESULTS, Recorder, interleaved, spread
from components_spanmetrics import SPANS, realistic_request
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import ComponentId, CreateSettings
from meshwatch.collector.exporters import prometheus
from meshwatch.collector.host import CollectorHost
from meshwatch.collector.processors import attributes, probabilistic_sampler, redaction
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry


class _Null:
    def consume(self, batch: Batch) -> None:
        pass


def metrics_request(points: int = 512) -> bytes:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.add(key="service.name").value.string_value = "checkout"
    rm.resource.attributes.add(key="service.instance.id").value.string_value = "pod-1"
    sm = rm.scope_metrics.add()
    sm.scope.name = "bench"
    now = time.time_ns()
    hist = sm.metrics.add(name="http.server.request.duration", unit="s")
    hist.histogram.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    total = sm.metrics.add(name="http.server.requests", unit="{request}")
    total.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    total.sum.is_monotonic = True
    bounds = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
    for i in range(points // 2):
        attrs = {"http.route": f"/api/{i % 64}", "http.request.method": "GET", "http.response.status_code": 200 + i % 3}
        p = hist.histogram.data_points.add(
            start_time_unix_nano=now - 10**9,
            time_unix_nano=now,
            count=15,
            sum=1.5,
            explicit_bounds=bounds,
            bucket_counts=[1] * 15,
        )
        c = total.sum.data_points.add(start_time_unix_nano=now - 10**9, time_unix_nano=now, as_int=3)
        for point in (p, c):
            for key, value in attrs.items():
                kv = point.attributes.add(key=key)
                if isinstance(value, int):
                    kv.value.int_value = value
                else:
                    kv.value.string_value = value
    return request.SerializeToString()


def cpu_us(fn, rounds: int, items: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(rounds):
        fn()
    return (time.process_time() - start) / (rounds * items) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="requests per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every case")
    parser.add_argument("--output", default=str(RESULTS / "components-processors.json"))
    args = parser.parse_args()
    recorder = Recorder("bench/collector/components_processors.py " + " ".join(sys.argv[1:]))
    host = CollectorHost(Path(tempfile.mkdtemp(prefix="meshwatch-bench-")))
    telemetry = Telemetry()
    raw = realistic_request()

    def processor(module, config: dict):
        proc = module.factory.create(
            CreateSettings(ComponentId(module.factory.type), Signal.TRACES, telemetry),
            module.factory.config_model.model_validate(config),
            _Null(),
        )
        proc.start(host)
        return lambda: proc.consume(Batch.from_bytes(Signal.TRACES, raw))

    def decode_only() -> object:
        return Batch.from_bytes(Signal.TRACES, raw).message

    cases = {"decode (reference for the rows below)": lambda: cpu_us(decode_only, args.rounds, SPANS)}
    processors = [
        (
            "attributes: upsert 1 key + delete 1 key",
            attributes,
            {
                "actions": [
                    {"key": "deployment.environment", "value": "prod", "action": "upsert"},
                    {"key": "client.address", "action": "delete"},
                ]
            },
        ),
        ("redaction: default patterns, no secrets present", redaction, {}),
        ("probabilistic_sampler: 25 %", probabilistic_sampler, {"sampling_percentage": 25}),
    ]
    for name, module, config in processors:
        run = processor(module, config)
        cases[name] = lambda run=run: cpu_us(run, args.rounds, SPANS)

    metrics_raw = metrics_request()
    exporter = prometheus.PrometheusExporter(
        CreateSettings(ComponentId("prometheus"), Signal.METRICS, telemetry),
        prometheus.PrometheusConfig(endpoint="127.0.0.1:0"),
    )
    exporter.start(host)
    # fold by hand below: stop the background fold thread first, or its CPU (process
    # time counts every thread) would be charged to consume
    exporter._stop.set()
    exporter._wake.set()
    exporter._thread.join()
    batch = Batch.from_bytes(Signal.METRICS, metrics_raw)

    def consume() -> float:
        cost = cpu_us(lambda: exporter.consume(batch), args.rounds, 512)  # stays under max_pending_bytes
        exporter._pending.clear()
        exporter._pending_bytes = 0
        return cost

    def fold_one() -> None:
        exporter._pending.append(metrics_raw)
        exporter.drain()

    cases["prometheus exporter: consume (receive path), per metric point"] = consume
    cases["prometheus exporter: fold into series (background), per metric point"] = lambda: cpu_us(
        fold_one, args.rounds, 512
    )
    measured = interleaved(cases, args.repeats)
    decode = statistics.median(measured["decode (reference for the rows below)"])
    rows = {}
    print(f"{'case':70s} {'µs/item':>8s} {'(min–max)':>15s}")
    for name, values in measured.items():
        # a processor's own cost: its run (decode + pass) less the median decode
        own = (
            [v - decode for v in values]
            if name.split(":")[0] in {"attributes", "redaction", "probabilistic_sampler"}
            else values
        )
        rows[name] = spread(own)
        print(f"{name:70s} {rows[name]['median']:8.3f} {rows[name]['min']:7.3f}–{rows[name]['max']:<7.3f}")
    start = time.perf_counter()
    families = exporter.store.families()
    render_ms = (time.perf_counter() - start) * 1e3
    exporter.shutdown(2)
    series = sum(1 for f in families for s in f.samples)
    print(f"render {series} samples for a scrape: {render_ms:.1f} ms")
    recorder.write(
        Path(args.output),
        {
            "unit": "collector CPU µs per item (span or metric point); processors: less the decode",
            "repeats": args.repeats,
            "requests_per_repeat": args.rounds,
            "cases": rows,
            "scrape_render": {"samples": series, "ms": render_ms},
        },
    )


if __name__ == "__main__":
    main()
