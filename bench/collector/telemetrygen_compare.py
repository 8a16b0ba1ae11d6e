"""The collector under the load real senders make, side by side with the OpenTelemetry Collector.

The load is ``telemetrygen traces`` (the OpenTelemetry project's own load generator,
v0.161.0): unthrottled workers, each with one export in flight like an SDK's batch
processor, 10-span traces, batches of 100 spans (its default) and of 512. Each collector
under test (CUT) is OTLP/gRPC in → queue → OTLP/gRPC out (no compression on either side)
to one sink, a reference OpenTelemetry Collector with the ``nop`` exporter whose
``otelcol_receiver_accepted_spans`` counts what was delivered. The CUTs:

* ``go-memory``      otelcol v0.165, the otlp exporter's in-memory ``sending_queue``
* ``go-file``        the same queue on the ``file_storage`` extension (its default: no fsync)
* ``go-file-fsync``  ``file_storage`` with ``fsync: true``
* ``mw-never`` / ``mw-always`` / ``mw-interval``  meshwatch's disk queue per fsync policy
  (``interval`` is the shipped default)

Per CUT, shape (batch, workers) and round: accepted spans (the CUT's own receiver
counter), delivered spans (sink delta after the queue drained; the run fails loudly if
they differ), the CUT's CPU seconds from /proc over load + drain (so telemetrygen and the
sink are not counted), spans per CUT CPU-second, wall rate (accepted / load seconds), and
the request latency a sequential sender sees (one 100-span request in flight, p50/p99).
Rounds interleave the CUTs and reverse their order every other round; medians and the
min–max spread of the rounds are printed and the raw figures go to ``--output`` with the
commit and the machine's load average.

    .venv/bin/python bench/collector/telemetrygen_compare.py [--seconds 10] [--rounds 3]
        [--only go-file-fsync,mw-interval] [--shapes 100x1,100x4,512x1,512x4] [--spanmetrics]

``--spanmetrics`` adds the spanmetrics connector (defaults) → a Prometheus exporter to every
CUT, the same on both sides. ``--before-src PATH`` (another checkout's ``collector/src``, e.g.
a worktree of the commit before a change) makes ``mw-<policy>-before`` CUTs available: the
same meshwatch CUT run from that code, interleaved with the rest, so a change is measured
against its predecessor under the same load.

Needs ``.venv/bin/meshwatch-stack install otelcol telemetrygen`` once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

sys.path.insert(0, str(Path(__file__).parent))
from _load import EXPORT, ProcStats, realistic_request, terminate, wait_port
from queue_fsync_latency import ROOT
from queue_fsync_latency import _commit as commit

from meshwatch.collector.testing import RunningCollector, free_port, scrape, start_collector
from meshwatch.stack import binary

RESULTS = ROOT / "bench" / "results" / "telemetrygen-compare.json"
CUTS = ("go-memory", "go-file", "go-file-fsync", "mw-never", "mw-always", "mw-interval")
GO_ACCEPTED = "otelcol_receiver_accepted_spans_total"  # as prometheus-client parses it
GO_REFUSED = "otelcol_receiver_refused_spans_total"
MW_ACCEPTED = "meshwatch_receiver_accepted_items_total"
MW_REFUSED = "meshwatch_receiver_refused_items_total"


@dataclass
class GoCollector:
    """A reference collector process with its own Prometheus self-metrics endpoint."""

    process: subprocess.Popen[bytes]
    grpc_endpoint: str
    metrics_url: str

    def counter(self, name: str) -> float:
        return sum(v for (sample, _), v in scrape(self.metrics_url).items() if sample == name)

    def stop(self) -> None:
        terminate(self.process)


def start_go(
    workdir: Path, *, exporters: dict[str, Any], extensions: dict[str, Any], spanmetrics: bool = False
) -> GoCollector:
    """otelcol with an otlp receiver on a free port and ``exporters`` in one traces pipeline."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, metrics = free_port(), free_port()
    config: dict[str, Any] = {
        "extensions": extensions,
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{port}"}}}},
        "exporters": exporters,
        "service": {
            "extensions": list(extensions),
            "telemetry": {
                "logs": {"level": "warn"},
                "metrics": {
                    "level": "basic",
                    "readers": [{"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": metrics}}}}],
                },
            },
            "pipelines": {"traces": {"receivers": ["otlp"], "exporters": list(exporters)}},
        },
    }
    if spanmetrics:
        add_spanmetrics(config)
    path = workdir / "otelcol.yaml"
    path.write_text(yaml.safe_dump(config))
    with (workdir / "otelcol.log").open("wb") as log:
        process = subprocess.Popen([str(binary("otelcol")), f"--config={path}"], stdout=log, stderr=log)
    wait_port(port)
    wait_port(metrics)
    return GoCollector(process, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics}/metrics")


def add_spanmetrics(config: dict[str, Any]) -> None:
    """The same extra work on both sides: spanmetrics (defaults) → a Prometheus exporter."""
    config.setdefault("connectors", {})["spanmetrics"] = {}
    config["exporters"]["prometheus"] = {"endpoint": f"127.0.0.1:{free_port()}"}
    pipelines = config["service"]["pipelines"]
    pipelines["traces"]["exporters"].append("spanmetrics")
    pipelines["metrics"] = {"receivers": ["spanmetrics"], "exporters": ["prometheus"]}


def start_cut(
    name: str, workdir: Path, sink: str, *, spanmetrics: bool = False, before_src: str | None = None
) -> tuple[Any, int, str]:
    """The collector under test: (handle, pid, grpc endpoint); ``mw-*-before`` runs ``before_src``."""
    if name.startswith("go-"):
        queue: dict[str, Any] = {"enabled": True}
        extensions: dict[str, Any] = {}
        if name != "go-memory":
            directory = workdir / "storage"
            directory.mkdir(parents=True, exist_ok=True)
            extensions["file_storage"] = {"directory": str(directory), "fsync": name == "go-file-fsync"}
            queue["storage"] = "file_storage"
        exporter = {"endpoint": sink, "tls": {"insecure": True}, "compression": "none", "sending_queue": queue}
        go = start_go(workdir, exporters={"otlp": exporter}, extensions=extensions, spanmetrics=spanmetrics)
        return go, go.process.pid, go.grpc_endpoint
    env = None
    if name.endswith("-before"):
        if not before_src:
            raise SystemExit(f"{name} needs --before-src")
        env = {"PYTHONPATH": before_src}  # that checkout's meshwatch.collector comes first
        name = name.removesuffix("-before")
    policy = name.removeprefix("mw-")
    config = {
        "exporters": {
            "otlp/sink": {
                "endpoint": sink,
                "tls": {"insecure": True},
                "compression": "none",
                "sending_queue": {"fsync": policy},
            }
        },
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/sink"]}}},
    }
    if spanmetrics:
        add_spanmetrics(config)
    mw = start_collector(config, workdir, env=env)
    assert mw.process is not None
    return mw, mw.process.pid, mw.grpc_endpoint


def counters(cut: Any) -> tuple[float, float]:
    """(accepted, refused) spans at the CUT's receiver."""
    if isinstance(cut, GoCollector):
        return cut.counter(GO_ACCEPTED), cut.counter(GO_REFUSED)
    assert isinstance(cut, RunningCollector)
    return cut.metric(MW_ACCEPTED, signal="traces"), cut.metric(MW_REFUSED, signal="traces")


def stop_cut(cut: Any) -> None:
    if isinstance(cut, GoCollector):
        cut.stop()
    else:
        cut.stop(timeout=30)


def sequential_latency(endpoint: str, requests: int) -> tuple[float, float]:
    """p50/p99 ms of one 100-span request in flight at a time (an SDK's batch processor)."""
    message = ExportTraceServiceRequest.FromString(realistic_request("bench-telemetrygen-latency"))
    del message.resource_spans[0].scope_spans[0].spans[100:]
    body = message.SerializeToString()
    channel = grpc.insecure_channel(endpoint)
    export = channel.unary_unary(EXPORT)
    try:
        for _ in range(20):
            export(body, timeout=10)
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            export(body, timeout=10)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        channel.close()
    latencies.sort()
    return statistics.median(latencies), latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]


def telemetrygen(endpoint: str, *, batch: int, workers: int, seconds: float, log: Path) -> float:
    """Run telemetrygen to completion; returns its wall seconds."""
    command = [
        str(binary("telemetrygen")),
        "traces",
        f"--otlp-endpoint={endpoint}",
        "--otlp-insecure",
        "--rate=0",
        f"--duration={seconds}s",
        "--child-spans=9",
        f"--batch-size={batch}",
        f"--workers={workers}",
        f"--service=bench-telemetrygen-{batch}x{workers}",
    ]
    started = time.monotonic()
    with log.open("ab") as out:
        subprocess.run(command, stdout=out, stderr=out, check=True, timeout=seconds + 120)
    return time.monotonic() - started


def drain(sink: GoCollector, before: float, expected: float, timeout: float = 120) -> float:
    """Wait until the sink has ``expected`` more spans than ``before`` (or stops moving)."""
    deadline = time.monotonic() + timeout
    last, still_since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        delivered = sink.counter(GO_ACCEPTED) - before
        if delivered >= expected:
            return delivered
        if delivered != last:
            last, still_since = delivered, time.monotonic()
        elif time.monotonic() - still_since > 20:
            return delivered
        time.sleep(0.2)
    return sink.counter(GO_ACCEPTED) - before


def one_cut(name: str, round_: int, args: argparse.Namespace, base: Path, sink: GoCollector) -> list[dict[str, Any]]:
    workdir = base / f"r{round_}-{name}"
    cut, pid, endpoint = start_cut(
        name, workdir, sink.grpc_endpoint, spanmetrics=args.spanmetrics, before_src=args.before_src
    )
    stats = ProcStats(pid)
    runs = []
    try:
        accepted_before, _ = counters(cut)
        sink_before = sink.counter(GO_ACCEPTED)
        p50, p99 = sequential_latency(endpoint, args.latency_requests)
        accepted_after, _ = counters(cut)
        drain(sink, sink_before, accepted_after - accepted_before)
        shapes = args.shapes if round_ % 2 == 0 else args.shapes[::-1]
        for batch, workers in shapes:
            accepted_before, refused_before = counters(cut)
            sink_before = sink.counter(GO_ACCEPTED)
            cpu_before = stats.cpu_seconds()
            load_seconds = telemetrygen(
                endpoint, batch=batch, workers=workers, seconds=args.seconds, log=workdir / "telemetrygen.log"
            )
            accepted_after, refused_after = counters(cut)
            accepted = accepted_after - accepted_before
            delivered = drain(sink, sink_before, accepted)
            cpu = stats.cpu_seconds() - cpu_before
            run = {
                "cut": name,
                "round": round_,
                "batch": batch,
                "workers": workers,
                "load_seconds": round(load_seconds, 3),
                "accepted": int(accepted),
                "refused": int(refused_after - refused_before),
                "delivered": int(delivered),
                "cut_cpu_seconds": round(cpu, 3),
                "spans_per_cpu_second": round(accepted / cpu) if cpu else None,
                "spans_per_second_wall": round(accepted / args.seconds),
                "sequential_p50_ms": round(p50, 3),
                "sequential_p99_ms": round(p99, 3),
                "peak_rss_mb": round(stats.peak_rss_mb(), 1),
                "loadavg": os.getloadavg(),
            }
            runs.append(run)
            print(
                f"round {round_} {name:<14} {batch:>3}x{workers}  {run['spans_per_second_wall']:>7} spans/s  "
                f"{run['spans_per_cpu_second'] or 0:>7} per CPU-s  delivered {run['delivered']}/{run['accepted']}  "
                f"refused {run['refused']}  seq p50 {p50:.2f} ms p99 {p99:.2f} ms  load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    finally:
        stop_cut(cut)
    return runs


def _commit_of(path: str) -> str:
    """The commit checked out where ``path`` is (the ``--before-src`` checkout)."""
    return subprocess.run(
        ["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def summarise(runs: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    def spread(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    summary = []
    for batch, workers in args.shapes:
        for name in args.only:
            rows = [r for r in runs if r["cut"] == name and r["batch"] == batch and r["workers"] == workers]
            if not rows:
                continue
            summary.append(
                {
                    "cut": name,
                    "batch": batch,
                    "workers": workers,
                    "rounds": len(rows),
                    "spans_per_cpu_second": spread([r["spans_per_cpu_second"] for r in rows]),
                    "spans_per_second_wall": spread([r["spans_per_second_wall"] for r in rows]),
                    "sequential_p50_ms": spread([r["sequential_p50_ms"] for r in rows]),
                    "sequential_p99_ms": spread([r["sequential_p99_ms"] for r in rows]),
                    "all_delivered": all(r["delivered"] == r["accepted"] for r in rows),
                }
            )
    return summary


def print_summary(summary: list[dict[str, Any]]) -> None:
    print("\nmedians (min–max) of the rounds:")
    print(f"{'cut':<14} {'shape':>6} {'spans/CPU-s':>22} {'spans/s wall':>22} {'seq p50 ms':>10} {'seq p99 ms':>10}")
    for row in summary:
        cpu, wall = row["spans_per_cpu_second"], row["spans_per_second_wall"]
        print(
            f"{row['cut']:<14} {row['batch']:>3}x{row['workers']:<2} "
            f"{cpu['median']:>8.0f} ({cpu['min']:.0f}–{cpu['max']:.0f}) "
            f"{wall['median']:>8.0f} ({wall['min']:.0f}–{wall['max']:.0f}) "
            f"{row['sequential_p50_ms']['median']:>10.2f} {row['sequential_p99_ms']['median']:>10.2f}"
            + ("" if row["all_delivered"] else "  NOT ALL DELIVERED")
        )


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        batch, _, workers = item.partition("x")
        shapes.append((int(batch), int(workers)))
    return shapes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="telemetrygen duration per shape")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(CUTS), help=f"comma-separated CUTs (of {', '.join(CUTS)})")
    parser.add_argument("--shapes", default="100x1,100x4,512x1,512x4", help="BATCHxWORKERS, comma-separated")
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--spanmetrics", action="store_true", help="add spanmetrics → prometheus on every CUT")
    parser.add_argument("--before-src", help="another checkout's collector/src, for the mw-<policy>-before CUTs")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.only = [c for c in args.only.split(",") if c]
    unknown = set(args.only) - set(CUTS) - {f"{cut}-before" for cut in CUTS if cut.startswith("mw-")}
    if unknown:
        parser.error(f"unknown CUT {', '.join(sorted(unknown))}; choose from {', '.join(CUTS)}")
    args.shapes = parse_shapes(args.shapes)

    started_on = commit()  # the code the collectors ran; a checkout edited meanwhile shows as a second commit
    base = Path(tempfile.mkdtemp(prefix="telemetrygen-compare-"))
    print(f"work directory {base}", flush=True)
    sink = start_go(base / "sink", exporters={"nop": {}}, extensions={})
    runs: list[dict[str, Any]] = []
    try:
        for round_ in range(args.rounds):
            for name in args.only if round_ % 2 == 0 else args.only[::-1]:
                runs += one_cut(name, round_, args, base, sink)
    finally:
        sink.stop()
    summary = summarise(runs, args)
    print_summary(summary)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "summary": summary,
        "runs": runs,
        "commit": started_on,
        "commit_at_end": commit(),
        "before_commit": _commit_of(args.before_src) if args.before_src else None,
        "cpus": os.cpu_count(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"raw results: {args.output}")
    return 0 if all(row["all_delivered"] for row in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
