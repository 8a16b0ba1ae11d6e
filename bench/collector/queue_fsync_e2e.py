"""Request latency a sequential OTLP/gRPC sender sees, per fsync policy, through the real collector.

One request in flight, like an SDK's batch processor: sender → meshwatch-collector (otlp
receiver → durable disk queue → otlp exporter) → a second meshwatch-collector with the
``debug`` exporter as the sink. The sender is answered once the request is durable in the
queue, so this is the queue's put→ack latency plus gRPC and decoding. Requests of 512 and
50 spans; ``--rounds`` interleaved rounds (order reversed every other round), a fresh
collector per policy and round; the median of the rounds is reported and the raw figures
go to ``--output`` (default ``bench/results/queue-fsync-e2e.json``) with the git commit.

``--compare NAME=DIR`` adds a variant whose collectors run the code in ``DIR`` (put first
on their ``PYTHONPATH``, e.g. ``git archive <commit> collector/src | tar -x -C DIR`` and
``DIR/collector/src``), interleaved with the current code in every round, so a before /
after comparison sees the same moments of a busy machine.

    .venv/bin/python bench/collector/queue_fsync_e2e.py [--requests 200] [--rounds 3] [--compare before=DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

sys.path.insert(0, str(Path(__file__).parent))
from _load import EXPORT, realistic_request
from queue_fsync_latency import POLICIES, ROOT, queue_source
from queue_fsync_latency import _commit as commit

from meshwatch.collector.testing import start_collector

RESULTS = ROOT / "bench" / "results" / "queue-fsync-e2e.json"


def _first_spans(request: bytes, spans: int) -> bytes:
    message = ExportTraceServiceRequest.FromString(request)
    del message.resource_spans[0].scope_spans[0].spans[spans:]
    return message.SerializeToString()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per size, policy and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--label", default="", help="stored with the results (e.g. which checkout ran)")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=DIR", help="another code variant")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="queue-fsync-e2e-"))
    sink_config = {
        "exporters": {"debug": {}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["debug"]}}},
    }
    sink = start_collector(sink_config, base / "sink")
    big = realistic_request("bench-queue-e2e")
    bodies = {512: big, 50: _first_spans(big, 50)}
    variants: dict[str, str] = {"current": ""}
    for spec in args.compare:
        name, _, folder = spec.partition("=")
        variants[name] = str(Path(folder).resolve())
    runs: list[dict] = []
    try:
        for round_ in range(args.rounds):
            order = [(v, p) for v in variants for p in POLICIES]
            for variant, policy in order if round_ % 2 == 0 else order[::-1]:
                path = os.pathsep.join(filter(None, [variants[variant], os.environ.get("PYTHONPATH", "")]))
                exporter = {
                    "endpoint": sink.grpc_endpoint,
                    "tls": {"insecure": True},
                    "sending_queue": {"fsync": policy},
                }
                config = {
                    "exporters": {"otlp/sink": exporter},
                    "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/sink"]}}},
                }
                collector = start_collector(config, base / f"r{round_}-{variant}-{policy}", env={"PYTHONPATH": path})
                channel = grpc.insecure_channel(collector.grpc_endpoint)
                export = channel.unary_unary(EXPORT)
                try:
                    for spans, body in bodies.items():
                        for _ in range(20):  # warm-up
                            export(body, timeout=10)
                        latencies = []
                        for _ in range(args.requests):
                            start = time.perf_counter()
                            export(body, timeout=10)
                            latencies.append((time.perf_counter() - start) * 1000)
                        run = {
                            "variant": variant,
                            "round": round_,
                            "policy": policy,
                            "spans_per_request": spans,
                            "requests": len(latencies),
                            "p50_ms": round(statistics.median(latencies), 3),
                            "p99_ms": round(_percentile(latencies, 0.99), 3),
                        }
                        runs.append(run)
                        print(
                            f"round {round_} {variant:<8} {policy:<8} {spans:>3} spans  p50 {run['p50_ms']:7.3f} ms  "
                            f"p99 {run['p99_ms']:7.3f} ms",
                            flush=True,
                        )
                finally:
                    channel.close()
                    collector.stop(timeout=20)
    finally:
        sink.stop(timeout=20)

    summary = []
    print(f"\nmedians of {args.rounds} rounds, {args.requests} sequential requests each:")
    print(f"{'variant':<8} {'policy':<8} {'spans':>5} {'p50 ms':>8} {'p99 ms':>8}")
    for spans, variant, policy in ((s, v, p) for s in bodies for v in variants for p in POLICIES):
        rows = [
            r for r in runs if r["variant"] == variant and r["policy"] == policy and r["spans_per_request"] == spans
        ]
        row = {
            "variant": variant,
            "policy": policy,
            "spans_per_request": spans,
            "p50_ms": round(statistics.median(r["p50_ms"] for r in rows), 3),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in rows), 3),
        }
        summary.append(row)
        print(f"{variant:<8} {policy:<8} {spans:>5} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "summary": summary,
                "runs": runs,
                "label": args.label,
                "commit": commit(),
                "queue_source": queue_source(),
                "variants": variants,
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"raw results: {args.output}")


if __name__ == "__main__":
    main()
