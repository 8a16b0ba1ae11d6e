"""Fault benchmarks: a 60 s Jaeger outage under load, and overload at twice the sustainable rate.

Outage: load at a steady rate into meshwatch-collector → real Jaeger; Jaeger is stopped
for 60 s and restarted on the same ports (its memory store starts empty, so the count
covers what was acknowledged from the moment it stopped). Printed: spans acknowledged
during the outage and after, how many arrived, missing, duplicates, the queue's peak
and the time to drain after the restart.

Overload: the collector with a memory limit (memory_limiter 300 MiB) and a bounded
queue, loaded by closed-loop senders well past what Jaeger takes here (≥2× its
sustainable rate). Printed: offered, acknowledged and refused rates, whether every
acknowledged span was delivered (collector accepted = senders' acks = sent to Jaeger,
nothing dropped) and peak RSS against the limit.

    .venv/bin/python bench/collector/faults.py [--outage 60] [--rate 20000] [--overload-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parent))
from _load import EXPORT, SPANS_PER_REQUEST, TRACES_PER_REQUEST, ProcStats, placeholder, realistic_request

from meshwatch.collector.testing import start_collector
from meshwatch.stack.runner import Server, Stack, wait_http


class TracedLoad:
    """Rate-limited sender that remembers every acknowledged trace id (8 traces of 64 spans per request)."""

    def __init__(self, endpoint: str, rate_spans: float, threads: int = 4) -> None:
        self.endpoint = endpoint
        self.interval = threads * SPANS_PER_REQUEST / rate_spans
        self.template = realistic_request("bench-faults")
        self.acked: list[tuple[float, bytes]] = []
        self.refused: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def start(self) -> TracedLoad:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(60)

    def _loop(self) -> None:
        channel = grpc.insecure_channel(self.endpoint)
        export = channel.unary_unary(EXPORT)
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            ids = [os.urandom(16) for _ in range(TRACES_PER_REQUEST)]
            body = self.template
            for i, trace_id in enumerate(ids):
                body = body.replace(placeholder(i), trace_id)
            sent = time.monotonic()
            try:
                export(body, timeout=30)
                with self.lock:
                    self.acked.extend((sent, t) for t in ids)
            except grpc.RpcError as error:
                with self.lock:
                    self.refused[error.code().name] = self.refused.get(error.code().name, 0) + SPANS_PER_REQUEST
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()
        channel.close()


def spans_in_jaeger(url: str, trace_id: bytes) -> int:
    try:
        with urllib.request.urlopen(f"{url}/api/traces/{trace_id.hex()}", timeout=10) as response:
            data = json.loads(response.read())["data"]
            return len(data[0]["spans"]) if data else 0
    except urllib.error.HTTPError:
        return 0


def count_arrived(url: str, ids: list[bytes]) -> tuple[int, int]:
    """(missing spans, duplicate spans) over ``ids`` (64 spans expected each)."""
    missing = duplicates = 0
    for trace_id in ids:
        n = spans_in_jaeger(url, trace_id)
        missing += max(0, 64 - n)
        duplicates += max(0, n - 64)
    return missing, duplicates


def restart(server: Server) -> Server:
    with open(server.log, "ab") as log:
        proc = subprocess.Popen(
            server.argv, stdout=log, stderr=subprocess.STDOUT, cwd=server.workdir, start_new_session=True
        )
    new = Server(server.name, proc.pid, server.ports, server.urls, server.workdir, server.log, server.argv)
    wait_http(f"{new.url}/api/services", timeout=60, is_alive=new.alive, what="jaeger")
    return new


def exporter(jaeger: Server, **queue) -> dict:
    return {
        "endpoint": jaeger.urls["otlp_grpc"],
        "tls": {"insecure": True},
        "sending_queue": {"fsync": "interval", **queue},
        "retry_on_failure": {"initial_interval": 0.5, "max_interval": 5},
    }


def outage(stack: Stack, tmp: Path, args) -> None:
    jaeger = stack.start("jaeger", max_traces=100_000)
    config = {
        "exporters": {"otlp/jaeger": exporter(jaeger)},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger"]}}},
    }
    collector = start_collector(config, tmp / "outage")
    load = TracedLoad(collector.grpc_endpoint, args.rate).start()
    time.sleep(5)
    jaeger.stop()
    stopped_at = time.monotonic()
    print(f"outage: Jaeger stopped under {args.rate:,.0f} spans/s; waiting {args.outage:.0f}s", flush=True)
    peak = 0.0
    while time.monotonic() - stopped_at < args.outage:
        peak = max(peak, collector.metric("meshwatch_queue_size_items"))
        time.sleep(1)
    jaeger = restart(jaeger)
    stack.servers["jaeger"] = jaeger
    restarted_at = time.monotonic()
    time.sleep(10)
    load.stop()
    while collector.metric("meshwatch_queue_size_items") > 0:
        time.sleep(0.5)
    drained = time.monotonic() - restarted_at
    ids = [t for sent, t in load.acked if sent >= stopped_at]
    time.sleep(2)
    missing, duplicates = count_arrived(jaeger.url, ids)
    spans = len(ids) * 64
    print(
        f"  acknowledged from the stop on: {spans:,} spans ({len(ids):,} traces); arrived: {spans - missing:,}; "
        f"missing: {missing}; duplicates: {duplicates} ({duplicates / max(1, spans):.3%})"
    )
    print(
        f"  queue peak {peak:,.0f} spans; drained {drained:.1f}s after the restart (incl. 10 s of further load); "
        f"refused: {load.refused or 'none'}; dropped: "
        f"{collector.metric('meshwatch_exporter_dropped_items_total'):.0f}"
    )
    collector.stop()
    jaeger.stop()
    stack.servers.pop("jaeger", None)


def overload(stack: Stack, tmp: Path, args) -> None:
    """Closed-loop senders offering more than Jaeger takes, into a bounded queue and a memory limit."""
    from _load import Load

    jaeger = stack.start("jaeger", max_traces=100_000)
    config = {
        "processors": {"memory_limiter": {"limit_mib": 300, "spike_limit_mib": 60, "check_interval": "200ms"}},
        "exporters": {"otlp/jaeger": exporter(jaeger, queue_size=args.queue_size)},
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["memory_limiter"], "exporters": ["otlp/jaeger"]}
            }
        },
    }
    collector = start_collector(config, tmp / "overload")
    stats = ProcStats(collector.process.pid)
    load = Load(collector.grpc_endpoint, processes=2, threads=12).start()
    print(
        f"overload: {2 * 12} closed-loop senders of 512-span requests for {args.overload_seconds:.0f}s; "
        f"queue {args.queue_size:,} spans, memory limit 300 MiB",
        flush=True,
    )
    peak_rss = peak_queue = 0.0
    started = time.monotonic()
    while time.monotonic() - started < args.overload_seconds:
        peak_rss = max(peak_rss, stats.rss_mb())
        peak_queue = max(peak_queue, collector.metric("meshwatch_queue_size_items"))
        time.sleep(0.5)
    load.stop()
    elapsed = time.monotonic() - started
    while collector.metric("meshwatch_queue_size_items") > 0:
        time.sleep(0.5)
    acked, refused = load.acked.value, load.refused.value
    accepted = collector.metric("meshwatch_receiver_accepted_items_total")
    counted = collector.metric("meshwatch_receiver_refused_items_total")
    sent = collector.metric("meshwatch_exporter_sent_items_total")
    dropped = collector.metric("meshwatch_exporter_dropped_items_total")
    refused_name = "meshwatch_receiver_refused_items_total"
    by_reason = {r: collector.metric(refused_name, reason=r) for r in ("queue_full", "memory_limit")}
    print(
        f"  offered {(acked + refused) / elapsed:,.0f} spans/s; acknowledged {acked / elapsed:,.0f} spans/s "
        f"({acked:,}), refused {refused:,} (counted by the collector: {counted:,.0f}, by reason: "
        f"{by_reason})"
    )
    print(
        f"  collector accepted {accepted:,.0f} = acknowledged {acked:,}: {accepted == acked}; delivered to Jaeger "
        f"{sent:,.0f}; dropped {dropped:.0f}; every item delivered or refused: {sent == acked and dropped == 0}"
    )
    print(f"  peak RSS {max(peak_rss, stats.peak_rss_mb()):.0f} MB (limit 300 MiB); queue peak {peak_queue:,.0f}")
    collector.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=float, default=60)
    parser.add_argument("--rate", type=float, default=20_000, help="spans/s during the outage run")
    parser.add_argument("--overload-seconds", type=float, default=30)
    parser.add_argument("--queue-size", type=int, default=200_000)
    parser.add_argument("--only", choices=["outage", "overload"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshwatch-bench-faults-") as tmp:
        state = Path(tmp) / "stack"
        state.mkdir()
        state.chmod(0o755)
        stack = Stack(state)
        try:
            if args.only in (None, "outage"):
                outage(stack, Path(tmp), args)
            if args.only in (None, "overload"):
                overload(stack, Path(tmp), args)
        finally:
            stack.down()


if __name__ == "__main__":
    main()
