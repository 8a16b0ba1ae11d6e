"""Tail sampling, side by side with the OpenTelemetry Collector (Go, contrib tailsamplingprocessor v0.161.0).

Two measurements, each in interleaved rounds (Go, meshwatch, Go, meshwatch, ...):

* **throughput**: OTLP/gRPC load (requests of 16 traces × 32 spans, fresh trace ids; about
  1.25 % of traces fail, 1.25 % are slow) for ``--seconds``, into ``otlp receiver →
  tail_sampling → otlp/http exporter → a counting sink`` with the policy set "errors +
  latency > 500 ms + 5 % of the rest" at ``--decision-wait`` (30 s by default). After the
  load the collector is left to decide everything (decision_wait + 5 s), then its CPU
  (user+system from /proc) is read: spans per CPU second = spans/s per core, decisions
  included. Delivered counts are checked: what the sink got is whole traces, and the
  kept share is the expected one (≈ 7.4 %) for both.
* **memory per held trace**: ``--held-traces`` traces of 32 spans sent with a decision_wait
  longer than the run; the collector's RSS growth is divided by the traces held and
  compared with the raw span bytes held (the serialized spans).

Raw results (every round, with the machine's load average and the git commit) go to
``--output`` (default ``bench/results/tail-sampling.json``).

    .venv/bin/python bench/collector/tail_sampling.py [--rounds 3] [--seconds 30] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

sys.path.insert(0, str(Path(__file__).parent))
from _load import ProcStats, terminate, wait_port
from queue_fsync_latency import _commit

from meshwatch.collector.otlp_sink import otlp_sink
from meshwatch.collector.testing import free_port, start_collector
from meshwatch.stack import binary

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "tail-sampling.json"
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TRACES, SPANS = 16, 32
POLICIES = [
    {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
    {"name": "slow", "type": "latency", "latency": {"threshold_ms": 500}},
    {"name": "rest", "type": "probabilistic", "probabilistic": {"sampling_percentage": 5}},
]
#: 0.2 of the requests have one failing trace, 0.2 one slow trace (of 16): then 5 % of the rest.
EXPECTED_KEPT = 2 * 0.2 / TRACES + 0.05 * (1 - 2 * 0.2 / TRACES)


def _placeholder(index: int) -> bytes:
    return bytes([0xB0 + index]) * 15 + b"\x6b"


def template(*, failing: bool, slow: bool) -> bytes:
    """One request of 16 traces × 32 spans (10 attributes each); trace 0 may fail, trace 1 be slow."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for key, value in (("service.name", "bench-checkout"), ("service.version", "1.4.2"), ("host.name", "bench-1")):
        attr = rs.resource.attributes.add()
        attr.key, attr.value.string_value = key, value
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "opentelemetry.instrumentation.fastapi", "0.50b0"
    now = time.time_ns()
    for t in range(TRACES):
        for i in range(SPANS):
            span = ss.spans.add()
            span.trace_id = _placeholder(t)
            span.span_id = (t * 1000 + i + 1).to_bytes(8, "big")
            if i:
                span.parent_span_id = (t * 1000 + 1).to_bytes(8, "big")
            span.name = "GET /api/orders/{id}" if i == 0 else f"SELECT orders {i % 7}"
            span.kind = 2 if i == 0 else 3
            span.start_time_unix_nano = now + i * 10_000
            length = 600_000_000 if (slow and t == 1 and i == 0) else 1_000_000 + i * 1000
            span.end_time_unix_nano = span.start_time_unix_nano + length
            span.status.code = 2 if (failing and t == 0 and i == 5) else 0
            for key, value in (
                ("http.request.method", "GET"),
                ("http.route", "/api/orders/{id}"),
                ("http.response.status_code", 200),
                ("server.address", "checkout"),
                ("server.port", 8080),
                ("network.protocol.version", "1.1"),
                ("user_agent.original", "python-httpx/0.27"),
                ("db.system", "postgresql"),
                ("db.statement", "SELECT * FROM orders WHERE id = $1"),
                ("thread.id", 140234),
            ):
                attr = span.attributes.add()
                attr.key = key
                if isinstance(value, int):
                    attr.value.int_value = value
                else:
                    attr.value.string_value = value
    return request.SerializeToString()


def raw_span_bytes(body: bytes) -> int:
    """The serialized spans of a request (what a trace's data is, without the envelope)."""
    request = ExportTraceServiceRequest.FromString(body)
    return sum(s.ByteSize() for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans)


def _sender(endpoint: str, threads: int, stop: Any, acked: Any, limit: int, seed: int) -> None:  # noqa: PLR0917
    import grpc

    plans = {(f, s): template(failing=f, slow=s) for f in (False, True) for s in (False, True)}

    def loop(offset: int) -> None:
        rng = random.Random(seed * 100 + offset)
        channel = grpc.insecure_channel(endpoint)
        export = channel.unary_unary(EXPORT)
        while not stop.is_set():
            body = plans[(rng.random() < 0.2, rng.random() < 0.2)]
            for t in range(TRACES):
                body = body.replace(_placeholder(t), os.urandom(16))
            with acked.get_lock():
                if limit and acked.value >= limit:
                    break
            try:
                export(body, timeout=30)
            except grpc.RpcError:
                time.sleep(0.05)  # refused (backpressure): retried with fresh ids, only acked spans count
                continue
            with acked.get_lock():
                acked.value += TRACES * SPANS
        channel.close()

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


class Load:
    def __init__(self, endpoint: str, processes: int, threads: int, limit: int = 0) -> None:
        ctx = mp.get_context("spawn")
        self.stop_event = ctx.Event()
        self.acked = ctx.Value("q", 0)
        self.procs = [
            ctx.Process(target=_sender, args=(endpoint, threads, self.stop_event, self.acked, limit, i), daemon=True)
            for i in range(processes)
        ]

    def start(self) -> Load:
        for p in self.procs:
            p.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for p in self.procs:
            p.join(60)


# --- the two collectors ---------------------------------------------------------------------------


def _tail_sampling(decision_wait: float) -> dict[str, Any]:
    return {"decision_wait": f"{decision_wait}s", "num_traces": 1_000_000, "policies": POLICIES}


def start_go(workdir: Path, sink_url: str, decision_wait: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{port}"}}}},
        "processors": {"tail_sampling": _tail_sampling(decision_wait)},
        "exporters": {"otlp_http": {"endpoint": sink_url, "compression": "none"}},
        "service": {
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["tail_sampling"], "exporters": ["otlp_http"]}
            },
        },
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "otelcol.yaml").write_text(yaml.safe_dump(config))
    log = (workdir / "otelcol.log").open("wb")
    binary_path = binary("otelcol-tailsampling")
    proc = subprocess.Popen(
        [str(binary_path), "--config", str(workdir / "otelcol.yaml")], stdout=log, stderr=subprocess.STDOUT
    )
    wait_port(port)
    return proc, f"127.0.0.1:{port}"


def start_meshwatch(workdir: Path, sink_url: str, decision_wait: float) -> tuple[Any, str]:
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {}}}},
        "processors": {"tail_sampling": {**_tail_sampling(decision_wait), "memory_limit_mib": 4096}},
        "exporters": {"otlphttp": {"endpoint": sink_url}},
        "service": {
            "telemetry": {"logs": {"level": "warning"}},
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["tail_sampling"], "exporters": ["otlphttp"]}
            },
        },
    }
    collector = start_collector(config, workdir)
    return collector, collector.grpc_endpoint


def _stop(kind: str, handle: Any) -> None:
    if kind == "go":
        terminate(handle)
    else:
        handle.stop(timeout=30)


def _pid(kind: str, handle: Any) -> int:
    return handle.pid if kind == "go" else handle.process.pid


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def throughput_round(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with otlp_sink() as sink:
        starter = start_go if kind == "go" else start_meshwatch
        handle, endpoint = starter(workdir, sink.url, args.decision_wait)
        try:
            stats = ProcStats(_pid(kind, handle))
            time.sleep(1.0)
            cpu0, load_before = stats.cpu_seconds(), _loadavg()
            load = Load(endpoint, args.processes, args.threads).start()
            ready = time.monotonic() + 60
            while not load.acked.value and time.monotonic() < ready:  # the senders' start-up is not the collector's
                time.sleep(0.05)
            started, first = time.monotonic(), load.acked.value
            time.sleep(args.seconds)
            window = load.acked.value - first
            loaded = time.monotonic() - started
            load.stop()
            accepted = load.acked.value
            # everything accepted is decided within decision_wait (+ a tick): then count
            deadline = time.monotonic() + args.decision_wait + 30
            time.sleep(args.decision_wait + 2)
            last = -1
            while time.monotonic() < deadline:
                count = len(sink.spans)
                if count == last:
                    break
                last = count
                time.sleep(3)
            cpu = stats.cpu_seconds() - cpu0
            peak_rss = stats.peak_rss_mb()
            kept = len(sink.spans)
            per_trace: dict[str, int] = {}
            with sink.lock:
                for seen in sink.spans:
                    per_trace[seen.trace_id] = per_trace.get(seen.trace_id, 0) + 1
            own: dict[str, float] = {}
            if kind == "meshwatch":
                for (name, labels), value in handle.metrics().items():
                    if name == "meshwatch_processor_tail_sampling_traces_total":
                        decision = dict(labels)["decision"]
                        own[decision] = own.get(decision, 0) + value
        finally:
            _stop(kind, handle)
    return {
        "collector": kind,
        "accepted_spans": accepted,
        "load_seconds": round(loaded, 2),
        "accepted_spans_per_s": round(window / loaded),
        "collector_cpu_seconds": round(cpu, 2),
        "spans_per_cpu_second": round(accepted / cpu) if cpu else None,
        "peak_rss_mb": round(peak_rss, 1),
        "kept_spans": kept,
        "kept_share": round(kept / accepted, 4) if accepted else None,
        "kept_traces": len(per_trace),
        "partial_traces_kept": sum(1 for n in per_trace.values() if n != SPANS),
        "decided_traces": own or None,
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
    }


def memory_round(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """RSS growth while ``held_traces`` traces wait for a decision that does not come during the run."""
    spans_target = args.held_traces * SPANS
    with otlp_sink() as sink:
        starter = start_go if kind == "go" else start_meshwatch
        handle, endpoint = starter(workdir, sink.url, 3600)
        try:
            stats = ProcStats(_pid(kind, handle))
            warm = Load(endpoint, 1, 1, limit=TRACES * SPANS * 4).start()  # first requests: buffers, code paths
            warm.procs[0].join(60)
            warm.stop()
            time.sleep(2.0)
            rss0 = stats.rss_mb()
            load = Load(endpoint, 1, 2, limit=spans_target).start()
            for p in load.procs:
                p.join(600)
            load.stop()
            time.sleep(3.0)
            rss1 = stats.rss_mb()
            held_spans = load.acked.value
            held = None
            if kind == "meshwatch":
                for (name, labels), value in handle.metrics().items():
                    if name == "meshwatch_collector_held_bytes" and dict(labels).get("component") == "tail_sampling":
                        held = value
        finally:
            _stop(kind, handle)
    body = template(failing=False, slow=False)
    raw_per_span = raw_span_bytes(body) / (TRACES * SPANS)
    held_traces = held_spans / SPANS
    raw_total = raw_per_span * held_spans
    growth = (rss1 - rss0) * 2**20
    return {
        "collector": kind,
        "held_traces": held_traces,
        "raw_span_bytes_per_trace": round(raw_per_span * SPANS),
        "rss_growth_mb": round(rss1 - rss0, 1),
        "rss_growth_bytes_per_trace": round(growth / held_traces),
        "rss_growth_over_raw": round(growth / raw_total, 2),
        "held_bytes_reported": held,
        "loadavg": _loadavg(),
    }


def _summary(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    out = {}
    for kind in ("go", "meshwatch"):
        values = [r[key] for r in rounds if r["collector"] == kind and r[key] is not None]
        if values:
            out[kind] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="load per throughput round")
    parser.add_argument("--decision-wait", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=2, help="load processes")
    parser.add_argument("--threads", type=int, default=4, help="sender threads per load process")
    parser.add_argument("--held-traces", type=int, default=10_000)
    parser.add_argument("--skip", choices=["throughput", "memory"], default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    results: dict[str, Any] = {
        "benchmark": "tail_sampling",
        "commit": _commit(),
        "machine": {"cpus": os.cpu_count(), "loadavg_start": _loadavg()},
        "config": {
            "policies": POLICIES,
            "decision_wait_s": args.decision_wait,
            "load": {
                "processes": args.processes,
                "threads": args.threads,
                "traces_per_request": TRACES,
                "spans_per_trace": SPANS,
            },
            "expected_kept_share": round(EXPECTED_KEPT, 4),
            "reference": "otelcol-tailsampling v0.161.0 (contrib tailsamplingprocessor)",
        },
        "throughput": [],
        "memory": [],
    }
    with tempfile.TemporaryDirectory(prefix="meshwatch-tail-bench-") as tmp:
        for index in range(args.rounds):
            for kind in ("go", "meshwatch"):
                if args.skip != "throughput":
                    row = throughput_round(kind, args, Path(tmp) / f"t-{kind}-{index}")
                    results["throughput"].append(row)
                    print(json.dumps(row), flush=True)
                if args.skip != "memory":
                    row = memory_round(kind, args, Path(tmp) / f"m-{kind}-{index}")
                    results["memory"].append(row)
                    print(json.dumps(row), flush=True)
    results["machine"]["loadavg_end"] = _loadavg()
    results["summary"] = {
        "spans_per_cpu_second": _summary(results["throughput"], "spans_per_cpu_second"),
        "accepted_spans_per_s": _summary(results["throughput"], "accepted_spans_per_s"),
        "kept_share": _summary(results["throughput"], "kept_share"),
        "rss_growth_bytes_per_trace": _summary(results["memory"], "rss_growth_bytes_per_trace"),
        "rss_growth_over_raw": _summary(results["memory"], "rss_growth_over_raw"),
    }
    for row in results["throughput"]:
        share = row["kept_share"] or 0
        row["delivered_ok"] = row["partial_traces_kept"] == 0 and abs(share - EXPECTED_KEPT) < 0.02
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    print(f"raw results: {args.output}")


if __name__ == "__main__":
    main()
