"""Collector throughput, side by side with the OpenTelemetry Collector (Go), against the real Jaeger.

Same load, same Jaeger, same run, one collector at a time:

* ``go otlp→otlp``          otelcol v0.165 (Collector Builder): otlp receiver → batch → otlp exporter
* ``meshwatch otlp→otlp``   otlp receiver → durable disk queue (fsync interval) → otlp exporter
* ``go +spanmetrics``       as above plus the spanmetrics connector → prometheus exporter
* ``meshwatch +spanmetrics`` receive → durable queue → Jaeger, plus spanmetrics → prometheus

The load: 512-span OTLP/gRPC requests (8 traces × 64 spans, ~10 attributes each) from
separate processes, closed loop. Printed per collector: accepted spans/s, collector CPU
(user+system from /proc, so the load generator and Jaeger are not counted), spans/s per
collector core (= spans / CPU second), CPU µs per span, peak RSS, and the delay until a
probe span sent during the load is queryable in Jaeger (p50/p99); then ratios to Go.

    .venv/bin/python bench/collector/throughput.py [--seconds 20] [--processes 2] [--threads 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _load import Load, Probe, ProcStats, terminate, wait_port

from meshwatch.collector.testing import free_port, start_collector
from meshwatch.stack import binary
from meshwatch.stack.runner import Stack

FSYNC = ["interval"]
LINGER = [0.0]


def go_collector(workdir: Path, jaeger_otlp: str, *, spanmetrics: bool) -> tuple[object, str]:
    import subprocess

    port, prom = free_port(), free_port()
    config: dict = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{port}"}}}},
        "processors": {"batch": {}},
        "exporters": {"otlp": {"endpoint": jaeger_otlp, "tls": {"insecure": True}, "compression": "none"}},
        "service": {
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["otlp"]}},
        },
    }
    if spanmetrics:
        config["connectors"] = {"spanmetrics": {}}
        config["exporters"]["prometheus"] = {"endpoint": f"127.0.0.1:{prom}"}
        config["service"]["pipelines"]["traces"]["exporters"].append("spanmetrics")
        config["service"]["pipelines"]["metrics"] = {"receivers": ["spanmetrics"], "exporters": ["prometheus"]}
    path = workdir / "otelcol.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (workdir / "otelcol.log").open("wb")
    proc = subprocess.Popen([str(binary("otelcol")), "--config", str(path)], stdout=log, stderr=subprocess.STDOUT)
    wait_port(port)
    return proc, f"127.0.0.1:{port}"


def meshwatch_collector(workdir: Path, jaeger_otlp: str, *, spanmetrics: bool) -> tuple[object, str]:
    exporter = {
        "endpoint": jaeger_otlp,
        "tls": {"insecure": True},
        "sending_queue": {"fsync": FSYNC[0], "num_consumers": 2},
        "batch": {"linger": LINGER[0]},
    }
    config: dict = {
        "receivers": {"otlp": {"protocols": {"grpc": {}}}},
        "exporters": {"otlp/jaeger": exporter},
        "service": {
            "telemetry": {"logs": {"level": "warning"}},
            "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger"]}},
        },
    }
    if spanmetrics:
        config["connectors"] = {"spanmetrics": {}}
        config["exporters"]["prometheus"] = {"endpoint": f"127.0.0.1:{free_port()}"}
        config["service"]["pipelines"]["traces"]["exporters"].append("spanmetrics")
        config["service"]["pipelines"]["metrics"] = {"receivers": ["spanmetrics"], "exporters": ["prometheus"]}
    collector = start_collector(config, workdir)
    return collector, collector.grpc_endpoint


def run(name: str, start, jaeger, args, workdir: Path) -> dict:
    jaeger_otlp = jaeger.urls["otlp_grpc"].removeprefix("http://")
    handle, endpoint = start(workdir, jaeger_otlp)
    pid = handle.process.pid if hasattr(handle, "process") else handle.pid
    stats = ProcStats(pid)
    load = Load(endpoint, processes=args.processes, threads=args.threads, rate=args.rate / 512).start()
    time.sleep(args.warmup)
    probe = Probe(endpoint, jaeger.url).start()
    cpu0, spans0, t0 = stats.cpu_seconds(), load.acked.value, time.monotonic()
    time.sleep(args.seconds)
    cpu1, spans1, t1 = stats.cpu_seconds(), load.acked.value, time.monotonic()
    load.stop()
    probe.stop()
    peak = stats.peak_rss_mb()
    if hasattr(handle, "stop"):
        handle.stop()
    else:
        terminate(handle)
    spans, cpu, wall = spans1 - spans0, cpu1 - cpu0, t1 - t0
    p50, p99 = probe.percentiles()
    result = {
        "name": name,
        "spans_s": spans / wall,
        "cpu_cores": cpu / wall,
        "per_core": spans / cpu if cpu else float("nan"),
        "us_per_span": cpu / spans * 1e6 if spans else float("nan"),
        "rss_mb": peak,
        "p50": p50,
        "p99": p99,
        "refused": load.refused.value,
        "probes_lost": probe.lost,
    }
    print(
        f"{name:26s} {result['spans_s']:>10,.0f} {result['cpu_cores']:>6.2f} {result['per_core']:>12,.0f} "
        f"{result['us_per_span']:>8.2f} {peak:>8.0f} {p50:>7.2f} {p99:>7.2f} {result['refused']:>8}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--only", choices=["otlp", "spanmetrics"], default=None)
    parser.add_argument("--rate", type=float, default=0, help="spans/s in total (default: as fast as accepted)")
    parser.add_argument("--linger", type=float, default=0.0, help="meshwatch exporters' batch.linger (seconds)")
    parser.add_argument("--fsync", choices=["always", "interval", "never"], default="interval")
    args = parser.parse_args()
    FSYNC[0] = args.fsync
    LINGER[0] = args.linger
    with tempfile.TemporaryDirectory(prefix="meshwatch-bench-") as tmp:
        state = Path(tmp) / "stack"
        state.mkdir()
        state.chmod(0o755)
        stack = Stack(state)
        try:
            jaeger = stack.start("jaeger", storage="memory", max_traces=20_000)
            rate = f"{args.rate:,.0f} spans/s" if args.rate else "closed loop"
            print(
                f"Jaeger {jaeger.url}; load: {args.processes}×{args.threads} senders of 512-span requests "
                f"({rate}), {args.seconds:.0f}s measured after {args.warmup:.0f}s warm-up; meshwatch fsync "
                f"{args.fsync}\n"
            )
            print(
                f"{'collector':26s} {'spans/s':>10} {'cores':>6} {'spans/s/core':>12} {'µs/span':>8} "
                f"{'RSS MB':>8} {'p50 s':>7} {'p99 s':>7} {'refused':>8}"
            )
            results = {}
            for kind in ("otlp", "spanmetrics"):
                if args.only and kind != args.only:
                    continue
                sm = kind == "spanmetrics"
                label = "otlp→otlp" if not sm else "+spanmetrics"
                for who, fn in (("go", go_collector), ("meshwatch", meshwatch_collector)):
                    workdir = Path(tmp) / f"{who}-{kind}"
                    workdir.mkdir()
                    results[(who, kind)] = run(
                        f"{who} {label}", lambda w, j, fn=fn, sm=sm: fn(w, j, spanmetrics=sm), jaeger, args, workdir
                    )
            print("\nmeshwatch / go (per core, higher is better):")
            for kind in ("otlp", "spanmetrics"):
                if ("go", kind) in results:
                    go, mw = results[("go", kind)], results[("meshwatch", kind)]
                    print(
                        f"  {kind:12s} {mw['per_core'] / go['per_core']:.2f}×   "
                        f"(RSS {mw['rss_mb']:.0f} vs {go['rss_mb']:.0f} MB; "
                        f"p99 delay {mw['p99']:.2f} vs {go['p99']:.2f} s)"
                    )
        finally:
            stack.down()


if __name__ == "__main__":
    main()
