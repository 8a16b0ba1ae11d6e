"""Benchmark: collector CPU per log record in the elasticsearch exporter, against the real Elasticsearch.

Prints µs of collector CPU (this process' CPU time, so Elasticsearch's own work is
not counted) per log record for: encoding a 512-record OTLP request into the bulk
body (documents, deterministic ids, action lines), and a full ``send`` (encode +
bulk request + per-document result handling); the issue's target is ≤20 µs per record
(≥50,000 records/s per core). Each case is repeated, interleaved; medians and spread go
to ``--output`` (default ``bench/results/components-elasticsearch.json``) with the
commit. Elasticsearch is started through the stack runner on free ports (≈20-40 s)
unless --url points at a running one.

    .venv/bin/python bench/collector/components_elasticsearch.py [--batches 40] [--repeats 5] [--url http://127.0.0.1:9200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from meshwatch.collector.batch import Batch
from meshwatch.collector.exporters._es_docs import encode_logs
from meshwatch.collector.exporters.elasticsearch import ElasticsearchConfig, ElasticsearchSender
from meshwatch.collector.otlp_values import set_any
from meshwatch.collector.signals import Signal

sys.path.insert(0, str(Path(__file__).parent))
from _results import RESULTS, Recorder, interleaved, spread

RECORDS = 512


def realistic_logs(records: int = RECORDS) -> bytes:
    """One service's batch: JSON-logger style records with ≈8 attributes and trace context."""
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    for key, value in (
        ("service.name", "checkout"),
        ("service.namespace", "shop"),
        ("service.version", "2.3.1"),
        ("service.instance.id", "checkout-7d9f-abc12"),
        ("deployment.environment.name", "bench"),
        ("host.name", "node-4"),
        ("telemetry.sdk.language", "python"),
    ):
        set_any(rl.resource.attributes.add(key=key).value, value)
    sl = rl.scope_logs.add()
    sl.scope.name = "checkout.api"
    now = time.time_ns()
    for i in range(records):
        record = sl.log_records.add(
            time_unix_nano=now + i * 1000,
            observed_time_unix_nano=now + i * 1000,
            severity_number=9 if i % 10 else 17,
            severity_text="INFO" if i % 10 else "ERROR",
            trace_id=os.urandom(16),
            span_id=os.urandom(8),
        )
        record.body.string_value = f"order {i} placed for customer {i * 7 % 1000} total 42.{i % 100:02d} EUR"
        for key, value in (
            ("code.namespace", "checkout.orders"),
            ("code.function", "place_order"),
            ("code.lineno", 118),
            ("order.id", f"A-{i}"),
            ("customer.tier", "gold"),
            ("http.route", "/api/orders"),
            ("http.request.method", "POST"),
            ("duration_ms", 12.5),
        ):
            set_any(record.attributes.add(key=key).value, value)
    return request.SerializeToString()


def cpu_per_record(fn, rounds: int) -> float:
    start = time.process_time()
    for _ in range(rounds):
        fn()
    return (time.process_time() - start) / (rounds * RECORDS) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help="bulk requests of 512 records to send")
    parser.add_argument("--url", help="a running Elasticsearch (default: start one through the stack runner)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every case")
    parser.add_argument("--output", default=str(RESULTS / "components-elasticsearch.json"))
    args = parser.parse_args()
    recorder = Recorder("bench/collector/components_elasticsearch.py " + " ".join(sys.argv[1:]))
    raw = realistic_logs()  # as the exporter gets it from its queue: serialized bytes

    stack = None
    url = args.url
    if url is None:
        from meshwatch.stack import Stack

        state = Path(tempfile.mkdtemp(prefix="meshwatch-bench-es-"))
        state.chmod(0o755)
        stack = Stack(state)
        print("starting Elasticsearch through the stack runner ...", flush=True)
        url = stack.start("elasticsearch", heap="512m").url
    prefix = f"mwbench-{uuid.uuid4().hex[:6]}"
    sender = ElasticsearchSender(ElasticsearchConfig(endpoints=[url], index_prefix=prefix, timeout=60))
    sender.start(None)
    try:
        for _ in range(2):
            sender.send(
                Batch(Signal.LOGS, _raw=realistic_logs(), _items=RECORDS)
            )  # warm up: template, index, connections
        sends: list[dict[str, float]] = []

        def send_round() -> float:
            # distinct records per batch (fresh times and ids), as the queue hands them over: bytes
            batches = [Batch(Signal.LOGS, _raw=realistic_logs(), _items=RECORDS) for _ in range(args.batches)]
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            rejected = sum(sender.send(batch).rejected for batch in batches)
            cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
            sent = args.batches * RECORDS
            sends.append({"records": sent, "rejected": rejected, "wall_s": wall, "records_per_s_wall": sent / wall})
            return cpu / sent * 1e6

        measured = interleaved(
            {
                "decode + encode 512-record request (docs, ids, body)": lambda: cpu_per_record(
                    lambda: encode_logs(raw, "meshwatch-logs"), 100
                ),
                "send: encode + bulk + per-document results": send_round,
            },
            args.repeats,
        )
        rows = {name: spread(values) for name, values in measured.items()}
        print(f"{'case':52s} {'µs/record':>10s} {'(min–max)':>15s}")
        for name, row in rows.items():
            print(f"{name:52s} {row['median']:10.2f} {row['min']:7.2f}–{row['max']:<7.2f}")
        send_us = rows["send: encode + bulk + per-document results"]["median"]
        rejected = sum(s["rejected"] for s in sends)
        print(
            f"records sent: {sum(s['records'] for s in sends)} over {args.repeats} repeats "
            f"(wall rate median {statistics.median(s['records_per_s_wall'] for s in sends):,.0f}/s with one sender "
            f"thread, Elasticsearch on the same 2 cores); collector-CPU bound rate {1e6 / send_us:,.0f} records/s "
            f"per core; rejected: {rejected}"
        )
        recorder.write(
            Path(args.output),
            {
                "unit": "collector CPU µs per log record",
                "repeats": args.repeats,
                "cases": rows,
                "sends": sends,
                "records_per_core_from_median": 1e6 / send_us,
            },
        )
    finally:
        sender.shutdown()
        from elasticsearch import Elasticsearch

        client = Elasticsearch(url, request_timeout=60)
        client.options(ignore_status=404).indices.delete(index=f"{prefix}-*")
        client.options(ignore_status=404).indices.delete_index_template(name=prefix)
        client.close()
        if stack is not None:
            stack.down()


if __name__ == "__main__":
    main()
