"""``meshwatch-collector --workers 2`` against ``--workers 1``: accepted spans/s on this machine.

The same collector config (otlp receiver → durable queue, fsync interval → otlp exporter to
an in-memory Jaeger), the same closed-loop load (``_load.Load``: 512-span OTLP/gRPC requests
from ``--processes`` × ``--threads`` senders, one gRPC channel each, so the front spreads
their connections over the workers), the two worker counts interleaved for ``--rounds``
rounds (1, 2, 1, 2, …), each on a fresh storage folder.

Per run: spans/s acknowledged to the senders, the collector's CPU (supervisor and workers,
user+system from /proc, the load and Jaeger not counted), and the spans its exporters
delivered to Jaeger (``meshwatch_exporter_sent_items_total``, waited for after the load stops:
acknowledged must equal delivered). Then the medians, their spread, and the ratio
``--workers 2`` / ``--workers 1``. Raw JSON in ``bench/results/collector-workers.json``.

On a machine with 2 cores the load generator and Jaeger share them with the workers, so the
ratio says what a second worker buys there, not what it buys on an idle many-core host.

    .venv/bin/python bench/collector/workers.py [--seconds 12] [--rounds 3] [--processes 2] [--threads 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _load import Load, ProcStats
from queue_fsync_latency import _commit

from meshwatch.collector.testing import RunningCollector, start_collector
from meshwatch.stack.runner import Stack

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "bench" / "results" / "collector-workers.json"
LOADAVG_AT_START = os.getloadavg()


def _config(jaeger_otlp: str) -> dict[str, Any]:
    return {
        "receivers": {"otlp": {"protocols": {"grpc": {}}}},
        "exporters": {
            "otlp/jaeger": {
                "endpoint": jaeger_otlp,
                "tls": {"insecure": True},
                "sending_queue": {"fsync": "interval", "num_consumers": 2},
            }
        },
        "service": {
            "telemetry": {"logs": {"level": "warning"}},
            "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger"]}},
        },
    }


def _pids(collector: RunningCollector) -> list[int]:
    """The supervisor and its workers (a single process with --workers 1)."""
    assert collector.process is not None
    status, health = collector.health()
    assert status == 200, health
    return [collector.process.pid, *(w["pid"] for w in health.get("workers", {}).values())]


def _cpu(pids: list[int]) -> float:
    return sum(ProcStats(pid).cpu_seconds() for pid in pids)


def run(workers: int, jaeger_otlp: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    env = {"MESHWATCH_COLLECTOR_WORKERS": str(workers)}
    collector = start_collector(_config(jaeger_otlp), workdir, env=env)
    try:
        pids = _pids(collector)
        load = Load(collector.grpc_endpoint, processes=args.processes, threads=args.threads).start()
        time.sleep(args.warmup)
        cpu0, spans0, t0 = _cpu(pids), load.acked.value, time.monotonic()
        time.sleep(args.seconds)
        cpu1, spans1, t1 = _cpu(pids), load.acked.value, time.monotonic()
        load.stop()
        acked_total = load.acked.value
        deadline = time.monotonic() + 120
        sent = 0.0
        while time.monotonic() < deadline:
            sent = collector.metric("meshwatch_exporter_sent_items_total")
            if sent >= acked_total:
                break
            time.sleep(0.5)
        spread: dict[str, int] = {}
        refusals: dict[str, int] = {}  # why the collector pushed back, by reason
        for (name, labels), value in collector.metrics().items():
            if name == "meshwatch_receiver_accepted_items_total" and workers > 1:
                worker = dict(labels)["worker"]
                spread[worker] = spread.get(worker, 0) + int(value)
            if name == "meshwatch_receiver_refused_items_total" and value:
                reason = dict(labels)["reason"]
                refusals[reason] = refusals.get(reason, 0) + int(value)
    finally:
        collector.stop(timeout=60)
    wall, spans, cpu = t1 - t0, spans1 - spans0, cpu1 - cpu0
    result = {
        "workers": workers,
        "spans_s": spans / wall,
        "cpu_cores": cpu / wall,
        "us_per_span": cpu / spans * 1e6 if spans else None,
        "acked_total": acked_total,
        "delivered_total": int(sent),
        "refused_total": load.refused.value,
        "accepted_by_worker": spread,
        "refused_by_reason": refusals,
        "loadavg_after": os.getloadavg(),
    }
    print(
        f"workers={workers}  {result['spans_s']:>9,.0f} spans/s  {result['cpu_cores']:.2f} cores  "
        f"acked {acked_total:,} delivered {int(sent):,} refused {load.refused.value:,} {refusals}"
        + (f"  by worker {spread}" if spread else ""),
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="meshwatch-bench-workers-") as tmp:
        state = Path(tmp) / "stack"
        state.mkdir()
        state.chmod(0o755)
        stack = Stack(state)
        try:
            jaeger = stack.start("jaeger", storage="memory", max_traces=20_000)
            jaeger_otlp = jaeger.urls["otlp_grpc"].removeprefix("http://")
            print(
                f"load: {args.processes}×{args.threads} closed-loop senders of 512-span requests; "
                f"{args.seconds:.0f}s measured after {args.warmup:.0f}s; {args.rounds} interleaved rounds; "
                f"{os.cpu_count()} CPUs (shared)\n",
                flush=True,
            )
            for round_ in range(args.rounds):
                for workers in (1, 2):
                    workdir = Path(tmp) / f"round-{round_}-workers-{workers}"
                    runs.append({"round": round_, **run(workers, jaeger_otlp, args, workdir)})
        finally:
            stack.down()
    summary: dict[str, Any] = {}
    for workers in (1, 2):
        rates = [r["spans_s"] for r in runs if r["workers"] == workers]
        summary[f"workers_{workers}"] = {
            "median_spans_s": statistics.median(rates),
            "min_spans_s": min(rates),
            "max_spans_s": max(rates),
            "median_cpu_cores": statistics.median(r["cpu_cores"] for r in runs if r["workers"] == workers),
        }
    ratio = summary["workers_2"]["median_spans_s"] / summary["workers_1"]["median_spans_s"]
    per_round = [
        next(r["spans_s"] for r in runs if r["round"] == i and r["workers"] == 2)
        / next(r["spans_s"] for r in runs if r["round"] == i and r["workers"] == 1)
        for i in range(args.rounds)
    ]
    summary["ratio_median_2_over_1"] = ratio
    summary["ratio_per_round"] = per_round
    summary["all_delivered"] = all(r["delivered_total"] >= r["acked_total"] for r in runs)
    print(
        f"\n--workers 2 / --workers 1: {ratio:.2f}× (median spans/s; per round "
        f"{', '.join(f'{x:.2f}' for x in per_round)}); every acknowledged span delivered: {summary['all_delivered']}"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "bench": "collector-workers",
                "command": "bench/collector/workers.py " + " ".join(sys.argv[1:]),
                "commit": _commit(),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "system": platform.platform(),
                    "note": "shared by several sessions: other load ran at the same time",
                    "loadavg_at_start": LOADAVG_AT_START,
                    "loadavg_at_end": os.getloadavg(),
                },
                "args": {k: str(v) for k, v in vars(args).items()},
                "runs": runs,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"raw results: {args.output}")


if __name__ == "__main__":
    main()
