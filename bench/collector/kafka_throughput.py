"""Spans per second through the kafka exporter and the kafka receiver, meshwatch beside the Go collector.

Two collectors under test (CUT) per side, each in one process:

* producing: OTLP/gRPC in → ``kafka`` exporter (``partition_traces_by_id: true``, otlp_proto,
  no compression) → the stack's Kafka 4.4 (KRaft, one node, 4 partitions per topic);
* consuming: ``kafka`` receiver (its own consumer group, from the earliest offset) → OTLP/gRPC
  → one sink, a reference collector with the ``nop`` exporter whose
  ``otelcol_receiver_accepted_spans`` counts what was delivered.

``mw`` is meshwatch (its durable disk queue on both sides, fsync ``interval``, the shipped
default); ``go`` is otelcol v0.165 with contrib's kafka exporter/receiver v0.165.1 (in-memory
sending queue, its default) and the receiver's at-least-once settings (``message_marking.after:
true``, ``error_backoff.enabled: true``); ``go-default`` the same with the receiver's defaults,
which mark a record before the pipeline has it: when its exporter's queue is full the records
are skipped, so its delivered count may fall short (recorded, not fatal: the point of the run).

A round sends ``--spans`` spans (512-span requests of 8 traces, fresh trace ids, 4 sender
threads) to the producing CUT of a fresh topic, waits until the CUT reports them all sent to
Kafka, then starts the consuming CUT on that topic and waits until the sink has every one of
them (the run fails if a count differs, ``go-default`` excepted).

Figures per round: produce wall rate (first send → the CUT's sent counter reaches the total)
and spans per CUT CPU-second; consume wall rate (the consuming CUT ready → the sink has the
last span, so joining the group is counted), the steady rate after the first delivery (for
the record: meshwatch delivers merged batches of up to 8 MiB, so its first one is large), and
spans per CUT CPU-second from ready to the last span. Rounds interleave the
CUTs and reverse their order every other round; medians and min–max go to stdout, raw figures
to ``--output`` with the commit and the load average.

    .venv/bin/python bench/collector/kafka_throughput.py [--spans 204800] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _load import EXPORT, SPANS_PER_REQUEST, TRACES_PER_REQUEST, ProcStats, placeholder, realistic_request
from queue_fsync_latency import ROOT
from queue_fsync_latency import _commit as commit
from telemetrygen_compare import GO_ACCEPTED, GoCollector

from meshwatch.collector.testing import free_port, start_collector
from meshwatch.stack import Server, Stack, binary

RESULTS = ROOT / "bench" / "results" / "kafka-throughput.json"
CUTS = ("mw", "go", "go-default")


def go_process(workdir: Path, config: dict[str, Any]) -> GoCollector:
    workdir.mkdir(parents=True, exist_ok=True)
    metrics = free_port()
    config.setdefault("service", {})["telemetry"] = {
        "logs": {"level": "warn"},
        "metrics": {
            "level": "basic",
            "readers": [{"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": metrics}}}}],
        },
    }
    path = workdir / "otelcol.yaml"
    path.write_text(yaml.safe_dump(config))
    with (workdir / "otelcol.log").open("wb") as log:
        process = subprocess.Popen([str(binary("otelcol")), f"--config={path}"], stdout=log, stderr=log)
    grpc_in = config.get("receivers", {}).get("otlp", {}).get("protocols", {}).get("grpc", {})
    go = GoCollector(process, grpc_in.get("endpoint", ""), f"http://127.0.0.1:{metrics}/metrics")
    deadline = time.monotonic() + 60
    while True:
        try:
            go.counter(GO_ACCEPTED)
            return go
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"otelcol did not start; see {workdir / 'otelcol.log'}") from None
            time.sleep(0.2)


def start_producer(cut: str, workdir: Path, kafka: Server, topic: str) -> tuple[Any, int, str, Any]:
    """(handle, pid, grpc endpoint, sent-spans reader)."""
    exporter = {
        "brokers": [kafka.urls["bootstrap"]],
        "traces": {"topic": topic, "encoding": "otlp_proto"},
        "partition_traces_by_id": True,
        "producer": {"compression": "none"},
    }
    if cut.startswith("go"):
        port = free_port()
        go = go_process(
            workdir,
            {
                "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{port}"}}}},
                "exporters": {"kafka": exporter},
                "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["kafka"]}}},
            },
        )
        return go, go.process.pid, f"127.0.0.1:{port}", lambda: go.counter("otelcol_exporter_sent_spans_total")
    collector = start_collector(
        {
            "exporters": {"kafka": exporter},
            "service": {
                "telemetry": {"logs": {"level": "warning"}},
                "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["kafka"]}},
            },
        },
        workdir,
    )
    assert collector.process is not None
    return (
        collector,
        collector.process.pid,
        collector.grpc_endpoint,
        lambda: collector.metric("meshwatch_exporter_sent_items_total", exporter="kafka"),
    )


def start_consumer(cut: str, workdir: Path, kafka: Server, topic: str, sink: str) -> tuple[Any, int]:
    receiver = {
        "brokers": [kafka.urls["bootstrap"]],
        "group_id": f"bench-{topic}",
        "initial_offset": "earliest",
        "traces": {"topics": [topic], "encoding": "otlp_proto"},
    }
    if cut.startswith("go"):
        if cut == "go":
            # contrib's at-least-once settings: mark after the pipeline, retry what it refused
            receiver["message_marking"] = {"after": True, "on_error": False}
            receiver["error_backoff"] = {"enabled": True}
        go = go_process(
            workdir,
            {
                "receivers": {"kafka": receiver},
                "exporters": {"otlp": {"endpoint": sink, "tls": {"insecure": True}, "compression": "none"}},
                "service": {"pipelines": {"traces": {"receivers": ["kafka"], "exporters": ["otlp"]}}},
            },
        )
        return go, go.process.pid
    collector = start_collector(
        {
            "receivers": {"kafka": receiver},
            "exporters": {"otlp": {"endpoint": sink, "tls": {"insecure": True}}},
            "service": {
                "telemetry": {"logs": {"level": "warning"}},
                "pipelines": {"traces": {"receivers": ["kafka"], "exporters": ["otlp"]}},
            },
        },
        workdir,
    )
    assert collector.process is not None
    return collector, collector.process.pid


def stop(handle: Any) -> None:
    handle.stop()


def send_all(endpoint: str, requests: int, threads: int = 4) -> None:
    """``requests`` 512-span requests, each with fresh trace ids, from ``threads`` threads."""
    template = realistic_request()
    left = [requests]
    lock = threading.Lock()

    def worker() -> None:
        with grpc.insecure_channel(endpoint) as channel:
            call = channel.unary_unary(EXPORT)
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                body = template
                for t in range(TRACES_PER_REQUEST):
                    body = body.replace(placeholder(t), os.urandom(16))
                for attempt in range(100):
                    try:
                        call(body, timeout=30)
                        break
                    except grpc.RpcError:
                        time.sleep(0.05 * (attempt + 1))
                else:
                    raise RuntimeError("the CUT kept refusing a request")

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def wait_for(read: Any, target: float, timeout: float, what: str, *, settle: float = 0.0) -> float:
    """When ``read()`` reaches ``target``; with ``settle``, also when it has not moved for that long
    (a collector that dropped data never reaches the target: the caller records the shortfall)."""
    deadline = time.monotonic() + timeout
    last_value, last_change = None, time.monotonic()
    while True:
        value = read()
        now = time.monotonic()
        if value >= target:
            return now
        if value != last_value:
            last_value, last_change = value, now
        elif settle and value > 0 and now - last_change > settle:
            return last_change
        if now > deadline:
            raise RuntimeError(f"{what}: {value} of {target} after {timeout}s")
        time.sleep(0.05)


def one_round(cut: str, round_: int, args: argparse.Namespace, base: Path, *, kafka: Server, sink: GoCollector) -> dict:
    topic = f"bench-{cut}-{round_}-{uuid.uuid4().hex[:6]}"
    requests = args.spans // SPANS_PER_REQUEST
    total = requests * SPANS_PER_REQUEST
    workdir = base / f"r{round_}-{cut}"

    producer, pid, endpoint, sent = start_producer(cut, workdir / "producer", kafka, topic)
    try:
        stats = ProcStats(pid)
        cpu0, t0 = stats.cpu_seconds(), time.monotonic()
        send_all(endpoint, requests)
        t1 = wait_for(sent, total, 300, f"{cut} producer sent")
        produce_cpu = stats.cpu_seconds() - cpu0
        produce_rss = stats.peak_rss_mb()
    finally:
        stop(producer)

    before = sink.counter(GO_ACCEPTED)
    consumer, pid = start_consumer(cut, workdir / "consumer", kafka, topic, sink.grpc_endpoint)

    def delivered() -> float:
        return sink.counter(GO_ACCEPTED) - before

    try:
        stats = ProcStats(pid)
        ready, cpu_ready = time.monotonic(), stats.cpu_seconds()  # joining the group is counted from here
        first = wait_for(delivered, 1, 120, f"{cut} consumer first span")
        at_first = delivered()
        last = wait_for(delivered, total, 300, f"{cut} consumer delivered", settle=10.0)
        consume_cpu = stats.cpu_seconds() - cpu_ready
        consume_rss = stats.peak_rss_mb()
        time.sleep(1.0)
        got = delivered()
    finally:
        stop(consumer)
    steady = total - at_first
    return {
        "cut": cut,
        "round": round_,
        "spans": total,
        "delivered": got,
        "produce_seconds": round(t1 - t0, 3),
        "produce_spans_per_second": round(total / (t1 - t0)),
        "produce_cpu_seconds": round(produce_cpu, 2),
        "produce_spans_per_cpu_second": round(total / max(produce_cpu, 1e-9)),
        "produce_peak_rss_mb": round(produce_rss, 1),
        "consume_seconds_from_ready": round(last - ready, 3),
        "consume_spans_per_second": round(total / max(last - ready, 1e-9)),
        "consume_first_delivery_spans": at_first,
        "consume_seconds_after_first_delivery": round(last - first, 3),
        "consume_steady_spans_per_second": round(steady / (last - first)) if last > first and steady else None,
        "consume_cpu_seconds": round(consume_cpu, 2),
        "consume_spans_per_cpu_second": round(total / max(consume_cpu, 1e-9)),
        "consume_peak_rss_mb": round(consume_rss, 1),
        "loadavg_at_end": os.getloadavg(),
    }


FIELDS = (
    "produce_spans_per_second",
    "produce_spans_per_cpu_second",
    "consume_spans_per_second",
    "consume_spans_per_cpu_second",
)


def summarise(runs: list[dict[str, Any]], cuts: list[str]) -> list[dict[str, Any]]:
    summary = []
    for cut in cuts:
        rows = [r for r in runs if r["cut"] == cut]
        entry: dict[str, Any] = {"cut": cut, "rounds": len(rows)}
        for field in FIELDS:
            values = [r[field] for r in rows]
            entry[field] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        entry["all_delivered"] = all(r["delivered"] == r["spans"] for r in rows)
        summary.append(entry)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=204_800, help="spans per round and CUT (multiple of 512)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(CUTS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    cuts = [c for c in args.only.split(",") if c]

    started_on = commit()
    loadavg_start = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="kafka-throughput-"))
    print(f"work directory {base}", flush=True)
    stack = Stack(base / "stack")
    runs: list[dict[str, Any]] = []
    try:
        kafka = stack.start("kafka")
        port = free_port()
        # 64 MiB requests: meshwatch's otlp exporter merges queued records up to 8 MiB (batch.max_bytes),
        # beyond the Go receiver's default 4 MiB, which it would refuse as RESOURCE_EXHAUSTED.
        grpc_in = {"endpoint": f"127.0.0.1:{port}", "max_recv_msg_size_mib": 64}
        sink = go_process(
            base / "sink",
            {
                "receivers": {"otlp": {"protocols": {"grpc": grpc_in}}},
                "exporters": {"nop": {}},
                "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["nop"]}}},
            },
        )
        try:
            for round_ in range(args.rounds):
                for cut in cuts if round_ % 2 == 0 else cuts[::-1]:
                    run = one_round(cut, round_, args, base, kafka=kafka, sink=sink)
                    runs.append(run)
                    produce = f"{run['produce_spans_per_second']} spans/s ({run['produce_spans_per_cpu_second']}/CPU-s)"
                    consume = f"{run['consume_spans_per_second']} spans/s ({run['consume_spans_per_cpu_second']}/CPU-s)"
                    print(
                        f"round {round_} {cut:<3} produce {produce}  consume {consume}  "
                        f"delivered {run['delivered']:.0f}/{run['spans']}",
                        flush=True,
                    )
        finally:
            sink.stop()
    finally:
        stack.down()
    summary = summarise(runs, cuts)
    print("\nmedians (min–max) of the rounds:")
    for row in summary:
        cells = "  ".join(f"{f}: {row[f]['median']:.0f} ({row[f]['min']:.0f}–{row[f]['max']:.0f})" for f in FIELDS)
        print(f"{row['cut']:<3} {cells}" + ("" if row["all_delivered"] else "  NOT ALL DELIVERED"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "summary": summary,
        "runs": runs,
        "commit": started_on,
        "commit_at_end": commit(),
        "cpus": os.cpu_count(),
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"raw results: {args.output}")
    return 0 if all(row["all_delivered"] for row in summary if row["cut"] != "go-default") else 1


if __name__ == "__main__":
    sys.exit(main())
