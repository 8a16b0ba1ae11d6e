"""Micro-benchmark: the span-derived connectors' cost per span on the receive path.

Prints µs per span for decoding a realistic 512-span OTLP request (≈10 attributes per
span) alone and with a spanmetrics pass, a spanmetrics pass with two extra dimensions,
and a servicegraph pass, next to the issue's reference figures for this kind of
machine (decode ≈0.7 µs/span, decode + spanmetrics ≈1.4 µs/span; connector target
≈1 µs/span for the pass itself).

    .venv/bin/python bench/collector/components_spanmetrics.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import os
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import ComponentId, CreateSettings
from meshwatch.collector.connectors import servicegraph, spanmetrics
from meshwatch.collector.processors._otlp import set_any
from meshwatch.collector.signals import Signal

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
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    raw = realistic_request()
    settings = CreateSettings(ComponentId("spanmetrics"), Signal.TRACES)
    plain = spanmetrics.SpanMetricsConnector(settings, spanmetrics.SpanMetricsConfig(), _Null())
    dims = spanmetrics.SpanMetricsConnector(
        settings,
        spanmetrics.SpanMetricsConfig.model_validate(
            {"dimensions": [{"name": "http.route"}, {"name": "http.request.method"}]}
        ),
        _Null(),
    )
    graph = servicegraph.ServiceGraphConnector(
        CreateSettings(ComponentId("servicegraph"), Signal.TRACES), servicegraph.ServiceGraphConfig(), _Null()
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

    results = [
        ("decode a 512-span request", per_span(decode, raw, args.rounds), "≈0.7 (issue, this machine class)"),
        ("decode + spanmetrics", per_span(with_(plain), raw, args.rounds), "≈1.4 (issue)"),
        ("decode + spanmetrics, 2 dimensions", per_span(with_(dims), raw, args.rounds), "—"),
        ("decode + servicegraph", per_span(with_graph, raw, args.rounds), "—"),
    ]
    decode_cost = results[0][1]
    print(f"{'case':40s} {'µs/span':>9s} {'pass alone':>11s}   reference")
    for name, value, reference in results:
        alone = value - decode_cost if name != results[0][0] else value
        print(f"{name:40s} {value:9.2f} {alone:11.2f}   {reference}")
    print(f"(collector CPU, process time over {args.rounds} rounds of {SPANS} spans; target for a pass: ≈1 µs/span)")
    print(f"spanmetrics series: {sum(len(r.series) for r in plain._resources.values())}; flush build of them: ", end="")
    start = time.perf_counter()
    plain.build()
    print(f"{(time.perf_counter() - start) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
