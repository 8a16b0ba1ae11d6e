"""Logs through the running collector into the real Elasticsearch: records/s per collector core.

Load: OTLP/gRPC log requests of 512 records (≈8 attributes each, trace context, the
shape a JSON-logging service sends), unique per request, from separate processes at a
fixed rate. Printed: accepted records/s, collector CPU (from /proc: Elasticsearch and
the load are not counted), records/s per core and CPU µs per record (target ≥ 50,000/s
per core, ≤ 20 µs), peak RSS, and the delay until a probe record is searchable
(p50/p99). The OpenTelemetry Collector's Elasticsearch exporter cannot be built here: the
Go module proxy refuses contrib's elasticsearchexporter at v0.165.1 and v0.165.0 (the main
reference build's release) and, at v0.161.0 (the second build's), serves its version info
but refuses its zip (see ``OTELCOL_V0161_MODULES`` in meshwatch.stack.installer). So there is
no side-by-side; the exporter's own CPU per record is in
bench/collector/components_elasticsearch.py.

Every rate runs ``--rounds`` times, interleaved with alternating order, each round on a
fresh collector; every round, medians and spread go to ``--output`` (default
``bench/results/logs-elasticsearch.json``) with the commit.

    .venv/bin/python bench/collector/logs.py [--rate 3000 --rate 6000] [--seconds 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _load import ProcStats
from _results import RESULTS, Recorder, spread

from meshwatch.collector.testing import start_collector
from meshwatch.stack.runner import Stack

RECORDS = 512
EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
MARK = b"REQ-0000000000000000"


def logs_template() -> bytes:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    for key, value in (
        ("service.name", "bench-logs"),
        ("service.version", "2.3.1"),
        ("host.name", "bench-1"),
        ("deployment.environment.name", "bench"),
    ):
        attr = rl.resource.attributes.add()
        attr.key, attr.value.string_value = key, value
    sl = rl.scope_logs.add()
    sl.scope.name = "checkout.api"
    now = time.time_ns()
    for i in range(RECORDS):
        record = sl.log_records.add()
        record.time_unix_nano = record.observed_time_unix_nano = now + i * 1000
        record.severity_number, record.severity_text = (9, "INFO") if i % 10 else (17, "ERROR")
        record.trace_id, record.span_id = os.urandom(16), os.urandom(8)
        record.body.string_value = (
            f"{MARK.decode()} order {i} placed for customer {i * 7 % 1000} total 42.{i % 100:02d}"
        )
        for key, value in (
            ("code.namespace", "checkout.orders"),
            ("code.function", "place_order"),
            ("order.id", f"A-{i}"),
            ("customer.tier", "gold"),
            ("http.route", "/api/orders"),
            ("http.request.method", "POST"),
            ("duration_ms", "12.5"),
        ):
            attr = record.attributes.add()
            attr.key, attr.value.string_value = key, value
        attr = record.attributes.add()
        attr.key, attr.value.int_value = "code.lineno", 118
    return request.SerializeToString()


def _sender(endpoint: str, threads: int, rate: float, stop: Any, acked: Any, refused: Any) -> None:  # noqa: PLR0917
    import grpc

    template = logs_template()
    interval = threads / rate

    def loop() -> None:
        channel = grpc.insecure_channel(endpoint)
        export = channel.unary_unary(EXPORT)
        next_at = time.monotonic()
        while not stop.is_set():
            body = template.replace(MARK, b"REQ-" + os.urandom(8).hex().encode())
            try:
                export(body, timeout=30)
                with acked.get_lock():
                    acked.value += RECORDS
            except grpc.RpcError:
                with refused.get_lock():
                    refused.value += RECORDS
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def _search(es_url: str, text: str) -> int:
    body = json.dumps({"query": {"match_phrase": {"message": text}}, "size": 0}).encode()
    request = urllib.request.Request(
        f"{es_url}/meshwatch-logs-*/_search", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["hits"]["total"]["value"]


def _probe(endpoint: str, es_url: str, stop: threading.Event, delays: list[float]) -> None:
    import grpc
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    channel = grpc.insecure_channel(endpoint)
    export = channel.unary_unary(EXPORT)
    while not stop.wait(1.0):
        token = f"probe{os.urandom(6).hex()}"
        request = ExportLogsServiceRequest()
        rl = request.resource_logs.add()
        attr = rl.resource.attributes.add()
        attr.key, attr.value.string_value = "service.name", "bench-probe"
        record = rl.scope_logs.add().log_records.add()
        record.time_unix_nano = time.time_ns()
        record.body.string_value = token
        sent = time.monotonic()
        try:
            export(request.SerializeToString(), timeout=30)
        except grpc.RpcError:
            continue
        while time.monotonic() - sent < 60:
            try:
                if _search(es_url, token):
                    delays.append(time.monotonic() - sent)
                    break
            except OSError:
                pass
            time.sleep(0.1)


def one_round(es_url: str, workdir: Path, rate: float, seconds: float, warmup: float) -> dict:
    """A fresh collector, ``rate`` records/s for ``warmup`` + ``seconds``, then until its queue drains."""
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {}}}},
        "exporters": {"elasticsearch": {"endpoints": [es_url], "sending_queue": {"fsync": "interval"}}},
        "service": {
            "telemetry": {"logs": {"level": "warning"}},
            "pipelines": {"logs": {"receivers": ["otlp"], "exporters": ["elasticsearch"]}},
        },
    }
    collector = start_collector(config, workdir)
    try:
        stats = ProcStats(collector.process.pid)
        ctx = mp.get_context("spawn")
        stop, acked, refused = ctx.Event(), ctx.Value("q", 0), ctx.Value("q", 0)
        senders = [
            ctx.Process(target=_sender, args=(collector.grpc_endpoint, 4, rate / RECORDS / 2, stop, acked, refused))
            for _ in range(2)
        ]
        cpu_start = stats.cpu_seconds()
        for p in senders:
            p.start()
        time.sleep(warmup)
        delays: list[float] = []
        probe_stop = threading.Event()
        probe = threading.Thread(target=_probe, args=(collector.grpc_endpoint, es_url, probe_stop, delays))
        probe.start()
        cpu0, n0, t0 = stats.cpu_seconds(), acked.value, time.monotonic()
        time.sleep(seconds)
        cpu1, n1, t1 = stats.cpu_seconds(), acked.value, time.monotonic()
        stop.set()
        probe_stop.set()
        for p in senders:
            p.join(60)
        probe.join(60)
        records, cpu, wall = n1 - n0, cpu1 - cpu0, t1 - t0
        queue_left = collector.metric("meshwatch_queue_size_items")
        deadline = time.monotonic() + 300
        while collector.metric("meshwatch_queue_size_items") > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        drained = collector.metric("meshwatch_queue_size_items") == 0
        # All-in: the collector's CPU from the first request until the queue is empty, per record
        # acknowledged (so sending to Elasticsearch is counted even when it lags the intake).
        cpu_all, records_all = stats.cpu_seconds() - cpu_start, acked.value
        ordered = sorted(delays) or [float("nan")]
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        sent = collector.metric("meshwatch_exporter_sent_items_total")
        return {
            "offered_per_s": rate,
            "accepted_per_s": records / wall,
            "collector_cores_during_load": cpu / wall,
            "us_per_record_during_load": cpu / max(1, records) * 1e6,
            "drained": drained,
            "records_per_core_all_in": records_all / cpu_all if drained else None,
            "us_per_record_all_in": cpu_all / records_all * 1e6 if drained else None,
            "peak_rss_mb": stats.peak_rss_mb(),
            "searchable_after_p50_s": statistics.median(ordered),
            "searchable_after_p99_s": p99,
            "refused": refused.value,
            "queued_at_end_of_load": queue_left,
            "acknowledged": records_all,
            # probes (one record each) are sent through the same collector
            "sent": sent,
            "dropped": collector.metric("meshwatch_exporter_dropped_items_total"),
            "delivered_all_acknowledged": drained and sent >= records_all,
        }
    finally:
        collector.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, action="append", help="log records/s in total (repeatable)")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every rate")
    parser.add_argument("--output", default=str(RESULTS / "logs-elasticsearch.json"))
    args = parser.parse_args()
    rates = args.rate or [3000.0, 6000.0]
    recorder = Recorder("bench/collector/logs.py " + " ".join(sys.argv[1:]))
    tmp = Path(tempfile.mkdtemp(prefix="meshwatch-bench-logs-"))
    state = tmp / "stack"
    state.mkdir()
    state.chmod(0o755)
    tmp.chmod(0o755)
    stack = Stack(state)
    rounds: list[dict] = []
    try:
        print("starting Elasticsearch (≈30 s)…", flush=True)
        es = stack.start("elasticsearch", heap="512m")
        for index in range(args.rounds):
            for rate in rates if index % 2 == 0 else list(reversed(rates)):
                print(f"round {index + 1}/{args.rounds}: {rate:,.0f} records/s …", flush=True)
                result = one_round(es.url, tmp / f"collector-{index}-{rate:.0f}", rate, args.seconds, args.warmup)
                result["round"] = index + 1
                rounds.append(result)
                print(
                    "  " + ", ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
                )
    finally:
        stack.down()
    summary = {}
    for rate in rates:
        mine = [r for r in rounds if r["offered_per_s"] == rate]
        summary[f"{rate:.0f}"] = {
            key: spread([r[key] for r in mine])
            for key in (
                "accepted_per_s",
                "us_per_record_during_load",
                "us_per_record_all_in",
                "searchable_after_p99_s",
                "peak_rss_mb",
            )
            if all(r[key] is not None for r in mine)
        }
        summary[f"{rate:.0f}"]["delivered_all_acknowledged"] = all(r["delivered_all_acknowledged"] for r in mine)
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    recorder.write(Path(args.output), {"rounds": rounds, "summary": summary})


if __name__ == "__main__":
    main()
