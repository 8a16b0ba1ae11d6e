"""Fault benchmarks: a 60 s Jaeger outage under load, and overload at twice the sustainable rate.

Outage: load at a steady rate into meshwatch-collector → real Jaeger; Jaeger is stopped
for 60 s and restarted on the same ports (its memory store starts empty, so the count
covers what was acknowledged from the moment it stopped); a second exporter of the same
pipeline goes to a span counter (``_span_counter.py``) stopped and restarted with it,
which, unlike Jaeger's query API, counts a span sent twice twice. Printed: spans
acknowledged during the outage and after, how many arrived in Jaeger, missing,
duplicates at the counter, the queue's peak and the time to drain after the restart.
The counter's positive control (a planted duplicate) runs first.

Overload: the collector with a memory limit (memory_limiter 300 MiB) and a bounded
queue, loaded by closed-loop senders well past what Jaeger takes here (≥2× its
sustainable rate). Printed: offered, acknowledged and refused rates, whether every
acknowledged span was delivered (collector accepted = senders' acks = sent to Jaeger,
nothing dropped) and peak RSS against the limit.

Raw results go to ``--output`` (default ``bench/results/faults-<outage|overload|all>.json``)
with the commit.

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
from _results import RESULTS, Recorder
from _span_counter import SpanCounter

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


def outage(stack: Stack, tmp: Path, args) -> dict:
    """Jaeger and a span counter stopped together: Jaeger says what arrived, the counter what arrived twice."""
    jaeger = stack.start("jaeger", storage="memory", max_traces=100_000)
    counter = SpanCounter()
    config = {
        "exporters": {
            "otlp/jaeger": exporter(jaeger),
            "otlphttp/counter": {
                "endpoint": counter.url,
                "sending_queue": {"fsync": "interval"},
                "retry_on_failure": {"initial_interval": 0.5, "max_interval": 5},
            },
        },
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger", "otlphttp/counter"]}}},
    }
    collector = start_collector(config, tmp / "outage")
    load = TracedLoad(collector.grpc_endpoint, args.rate).start()
    time.sleep(5)
    jaeger.stop()
    counter.stop()
    stopped_at = time.monotonic()
    print(
        f"outage: Jaeger (and the span counter) stopped under {args.rate:,.0f} spans/s; waiting {args.outage:.0f}s",
        flush=True,
    )
    peak = 0.0
    while time.monotonic() - stopped_at < args.outage:
        peak = max(peak, collector.metric("meshwatch_queue_size_items"))
        time.sleep(1)
    jaeger = restart(jaeger)
    counter.start()
    stack.servers["jaeger"] = jaeger
    restarted_at = time.monotonic()
    time.sleep(10)
    load.stop()
    while collector.metric("meshwatch_queue_size_items") > 0:
        time.sleep(0.5)
    drained = time.monotonic() - restarted_at
    ids = [t for sent, t in load.acked if sent >= stopped_at]
    time.sleep(2)
    missing, _merged = count_arrived(jaeger.url, ids)
    at_counter = counter.count(set(ids), 64)
    spans = len(ids) * 64
    dropped = collector.metric("meshwatch_exporter_dropped_items_total")
    print(
        f"  acknowledged from the stop on: {spans:,} spans ({len(ids):,} traces); arrived in Jaeger: "
        f"{spans - missing:,}; missing: {missing}; at the counter: {at_counter} "
        f"(duplicates {at_counter['duplicates'] / max(1, spans):.3%})"
    )
    print(
        f"  queue peak {peak:,.0f} spans; drained {drained:.1f}s after the restart (incl. 10 s of further load); "
        f"refused: {load.refused or 'none'}; dropped: {dropped:.0f}"
    )
    collector.stop()
    jaeger.stop()
    counter.stop()
    stack.servers.pop("jaeger", None)
    return {
        "rate_spans_per_s": args.rate,
        "outage_s": args.outage,
        "acknowledged_spans_from_the_stop": spans,
        "traces": len(ids),
        "missing_in_jaeger": missing,
        "at_counter": at_counter,
        "duplicate_share": at_counter["duplicates"] / max(1, spans),
        "queue_peak_spans": peak,
        "drained_after_restart_s": drained,
        "refused": load.refused,
        "dropped": dropped,
    }


def counter_control() -> dict:
    """The duplicate count's positive control: a request planted twice must count its spans twice."""
    counter = SpanCounter()
    try:
        body = realistic_request("bench-control")
        for _ in range(2):
            request = urllib.request.Request(
                f"{counter.url}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}
            )
            urllib.request.urlopen(request, timeout=10).close()
        trace_ids = {t for t, _ in counter.copies}
        result = counter.count(trace_ids, 64)
    finally:
        counter.stop()
    if result["duplicates"] != SPANS_PER_REQUEST:
        raise SystemExit(f"the span counter missed a planted duplicate: {result}")
    return result


def overload(stack: Stack, tmp: Path, args) -> dict:
    """Closed-loop senders offering more than Jaeger takes, into a bounded queue and a memory limit."""
    from _load import Load

    jaeger = stack.start("jaeger", storage="memory", max_traces=100_000)
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
    rss = max(peak_rss, stats.peak_rss_mb())
    print(f"  peak RSS {rss:.0f} MB (limit 300 MiB); queue peak {peak_queue:,.0f}")
    collector.stop()
    return {
        "seconds": elapsed,
        "offered_spans_per_s": (acked + refused) / elapsed,
        "acknowledged_spans_per_s": acked / elapsed,
        "acknowledged": acked,
        "refused_at_senders": refused,
        "refused_counted_by_collector": counted,
        "refused_by_reason": by_reason,
        "accepted": accepted,
        "sent_to_jaeger": sent,
        "dropped": dropped,
        "every_item_delivered_or_refused": sent == acked and dropped == 0,
        "peak_rss_mb": rss,
        "queue_peak_spans": peak_queue,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=float, default=60)
    parser.add_argument("--rate", type=float, default=20_000, help="spans/s during the outage run")
    parser.add_argument("--overload-seconds", type=float, default=30)
    parser.add_argument("--queue-size", type=int, default=200_000)
    parser.add_argument("--only", choices=["outage", "overload"])
    parser.add_argument("--output", help="raw results (default: bench/results/faults-<what ran>.json)")
    args = parser.parse_args()
    recorder = Recorder("bench/collector/faults.py " + " ".join(sys.argv[1:]))
    results: dict = {"counter_control": counter_control()}
    with tempfile.TemporaryDirectory(prefix="meshwatch-bench-faults-") as tmp:
        state = Path(tmp) / "stack"
        state.mkdir()
        state.chmod(0o755)
        stack = Stack(state)
        try:
            if args.only in (None, "outage"):
                results["outage"] = outage(stack, Path(tmp), args)
            if args.only in (None, "overload"):
                results["overload"] = overload(stack, Path(tmp), args)
        finally:
            stack.down()
    recorder.write(Path(args.output or RESULTS / f"faults-{args.only or 'all'}.json"), results)


if __name__ == "__main__":
    main()
