"""Micro-benchmark: the span-derived connectors' cost per span on the receive path.

Prints µs per span for decoding a realistic 512-span OTLP request (≈10 attributes per
span) alone and with a spanmetrics pass, a spanmetrics pass with two extra dimensions,
and a servicegraph pass; each case repeated, interleaved, with the median and spread
written to ``--output`` (default ``bench/results/components-spanmetrics.json``) with the
commit. The Go collector's spanmetrics is measured as a whole pipeline, not per pass:
``bench/collector/telemetrygen_compare.py --spanmetrics``.

    .venv/bin/python bench/collector/components_spanmetrics.py [--rounds 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import ComponentId, CreateSettings
from meshwatch.collector.connectors import servicegraph, spanmetrics
from meshwatch.collector.otlp_values import set_any
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry

sys.path.insert(0, str(Path(__file__).parent))
from _results import RESULTS, Recorder, interleaved, spread

SPANS = 512
ROUTES = ["/api/orders", "/api/orders/{id}", "/api/pay", "/api/cart", "/health"]


class _Null:
    def consume(self, batch: Batch) -> None:
        pass


def realistic_request(services: int = 4) -> bytes:
    """512 spans across a few services, ≈10 attributes each, client/server pairs."""
    request = ExportTraceServiceRequest()
    now = time.time_ns()
    per_service = SPANS // services
    parents: list[tuple[bytes, bytes]] = []  # the previous (client) service's spans: one server span each
    for s in range(services):
        rs = request.resource_spans.add()
        for key, value in (
            ("service.name", f"svc-{s}"),
            ("service.instance.id", f"pod-{s}"),
            ("telemetry.sdk.language", "python"),
            ("deployment.environment.name", "bench"),
        ):
            set_any(rs.resource.attributes.add(key=key).value, value)
        ss = rs.scope_spans.add()
        ss.scope.name = "opentelemetry.instrumentation.fastapi"
        for i in range(per_service):
            client = s % 2 == 0
            if client:
                trace_id, parent = os.urandom(16), b""
            else:
                trace_id, parent = parents[i]
            span = ss.spans.add(
                trace_id=trace_id,
                span_id=os.urandom(8),
                parent_span_id=parent,
                name=f"GET {ROUTES[i % len(ROUTES)]}",
                kind=Span.SPAN_KIND_CLIENT if client else Span.SPAN_KIND_SERVER,
                start_time_unix_nano=now,
                end_time_unix_nano=now + 1_000_000 * (1 + i % 300),
                status=Status(code=Status.STATUS_CODE_ERROR if i % 50 == 0 else Status.STATUS_CODE_UNSET),
            )
            if client:
                if i == 0:
                    parents = []
                parents.append((span.trace_id, span.span_id))
            for key, value in (
                ("http.request.method", "GET"),
                ("http.route", ROUTES[i % len(ROUTES)]),
                ("http.response.status_code", 500 if i % 50 == 0 else 200),
                ("url.scheme", "http"),
                ("server.address", "svc-1"),
                ("server.port", 8080),
                ("network.protocol.version", "1.1"),
                ("user_agent.original", "python-httpx/0.28"),
                ("client.address", "10.0.0.7"),
                ("url.path", f"/api/orders/{i}"),
            ):
                set_any(span.attributes.add(key=key).value, value)
    return request.SerializeToString()


def per_span(fn, raw: bytes, rounds: int) -> float:
    fn(raw)  # warm up
    start = time.process_time()
    for _ in range(rounds):
        fn(raw)
    return (time.process_time() - start) / (rounds * SPANS) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="requests per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every case")
    parser.add_argument("--output", default=str(RESULTS / "components-spanmetrics.json"))
    args = parser.parse_args()
    recorder = Recorder("bench/collector/components_spanmetrics.py " + " ".join(sys.argv[1:]))
    raw = realistic_request()
    telemetry = Telemetry()
    settings = CreateSettings(ComponentId("spanmetrics"), Signal.TRACES, telemetry)
    plain = spanmetrics.SpanMetricsConnector(settings, spanmetrics.SpanMetricsConfig(), _Null())
    dims = spanmetrics.SpanMetricsConnector(
        settings,
        spanmetrics.SpanMetricsConfig.model_validate(
            {"dimensions": [{"name": "http.route"}, {"name": "http.request.method"}]}
        ),
        _Null(),
    )
    graph = servicegraph.ServiceGraphConnector(
        CreateSettings(ComponentId("servicegraph"), Signal.TRACES, telemetry),
        servicegraph.ServiceGraphConfig(),
        _Null(),
    )

    def decode(data: bytes) -> Batch:
        batch = Batch.from_bytes(Signal.TRACES, data)
        return batch

    def with_(connector):
        def run(data: bytes) -> None:
            connector.consume(Batch.from_bytes(Signal.TRACES, data))

        return run

    def with_graph(data: bytes) -> None:
        graph.consume(Batch.from_bytes(Signal.TRACES, data))
        graph.expire(now=time.monotonic() + 10)  # keep the store from filling up

    cases = {
        "decode a 512-span request": lambda: per_span(decode, raw, args.rounds),
        "decode + spanmetrics": lambda: per_span(with_(plain), raw, args.rounds),
        "decode + spanmetrics, 2 dimensions": lambda: per_span(with_(dims), raw, args.rounds),
        "decode + servicegraph": lambda: per_span(with_graph, raw, args.rounds),
    }
    measured = interleaved(cases, args.repeats)
    decode_cost = statistics.median(measured["decode a 512-span request"])
    rows = {}
    print(f"{'case':40s} {'µs/span':>9s} {'(min–max)':>13s} {'pass alone':>11s}")
    for name, values in measured.items():
        row = spread(values)
        row["pass_alone"] = row["median"] - decode_cost if name != "decode a 512-span request" else row["median"]
        rows[name] = row
        print(f"{name:40s} {row['median']:9.2f} {row['min']:6.2f}–{row['max']:<6.2f} {row['pass_alone']:11.2f}")
    print(
        f"(collector CPU, process time, µs per span; median of {args.repeats} interleaved repeats "
        f"of {args.rounds} requests of {SPANS} spans)"
    )
    print(f"spanmetrics series: {sum(len(r.series) for r in plain._resources.values())}; flush build of them: ", end="")
    start = time.perf_counter()
    plain.build()
    flush_ms = (time.perf_counter() - start) * 1e3
    print(f"{flush_ms:.2f} ms")
    recorder.write(
        Path(args.output),
        {
            "unit": "collector CPU µs per span",
            "repeats": args.repeats,
            "requests_per_repeat": args.rounds,
            "spans_per_request": SPANS,
            "cases": rows,
            "flush_ms": flush_ms,
        },
    )


if __name__ == "__main__":
    main()
