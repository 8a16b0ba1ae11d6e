"""Hostile-input figures for issue 11: a bad neighbour, and a flood of concurrent calls.

bad-neighbour: 100 valid one-span traces and, in their middle, one request whose span
has a 5-byte trace id, sent over OTLP/gRPC to a meshwatch-collector whose ``otlp``
exporter (one consumer, 2 s linger, so all of them are merged into one send) points at
a real Jaeger. Printed: valid traces found in Jaeger, dead-letter lines, and the
answer the bad request got. With ``--into-queue`` the same 101 requests are put
straight into an in-process ``otlp`` exporter's queue (past the receiver's checks), so
what is measured is the exporter's handling of a merged send Jaeger refuses.

flood: 1000 concurrent OTLP/gRPC calls (one thread each, released together) at a
collector whose exporter points at a closed port (so nothing drains and the workers
stay busy). Printed: outcomes by status code, how many refusals carried a RetryInfo,
and the collector's refused counter by reason.

    .venv/bin/python bench/collector/hostile.py bad-neighbour [--into-queue]
    .venv/bin/python bench/collector/hostile.py flood [--calls 1000]
    .venv/bin/python bench/collector/hostile.py reference-backlog [--spans 30000]

reference-backlog: the reference OpenTelemetry Collector (v0.165, built by
``meshwatch-stack install otelcol``) with 300 queue consumers forwards a backlog of
one-trace requests (10 spans each) through meshwatch-collector into a real Jaeger.
Printed: spans the reference collector acknowledged, what it counted as failed
(dropped), and how many of the traces are complete in Jaeger.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshwatch.collector.testing import free_port, start_collector
from meshwatch.stack.runner import Stack

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _request(trace_id: bytes, span_id: bytes = b"\x00" * 7 + b"\x01") -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    attr = rs.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", "bench-hostile"
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = trace_id, span_id, "GET /"
    span.start_time_unix_nano = time.time_ns()
    span.end_time_unix_nano = span.start_time_unix_nano + 1_000_000
    return request.SerializeToString()


def _in_jaeger(url: str, trace_id: bytes) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/traces/{trace_id.hex()}", timeout=10) as response:
            return bool(json.loads(response.read()).get("data"))
    except urllib.error.HTTPError:
        return False


def _wait_for(jaeger_url: str, good: list[bytes]) -> int:
    deadline = time.monotonic() + 20
    found = 0
    while time.monotonic() < deadline:
        found = sum(_in_jaeger(jaeger_url, t) for t in good)
        if found == len(good):
            break
        time.sleep(1)
    return found


def _letters(storage: Path) -> tuple[int, int]:
    lines = [line for path in (storage / "deadletter").glob("*.jsonl") for line in path.read_text().splitlines()]
    return len(lines), sum(json.loads(line)["items"] for line in lines)


def bad_neighbour_in_queue(workdir: Path, exporter_config: dict, jaeger_url: str) -> None:
    import os

    from meshwatch.collector.batch import Batch
    from meshwatch.collector.component import ComponentId, CreateSettings
    from meshwatch.collector.exporters.otlp import factory
    from meshwatch.collector.host import CollectorHost
    from meshwatch.collector.signals import Signal
    from meshwatch.collector.telemetry import Telemetry

    settings = CreateSettings(ComponentId("otlp", "jaeger"), Signal.TRACES, Telemetry())
    exporter = factory.create(settings, factory.config_model.model_validate(exporter_config))
    exporter.start(CollectorHost(workdir))
    try:
        good = [os.urandom(16) for _ in range(100)]
        for i, trace_id in enumerate(good):
            exporter.consume(Batch.from_bytes(Signal.TRACES, _request(trace_id)))
            if i == 49:
                exporter.consume(Batch.from_bytes(Signal.TRACES, _request(b"\x01\x02\x03\x04\x05")))
        found = _wait_for(jaeger_url, good)
    finally:
        exporter.shutdown(5)
    lines, items = _letters(workdir)
    print("bad request put straight into the exporter's queue")
    print(f"valid traces in Jaeger: {found} of {len(good)}")
    print(f"dead-letter lines: {lines} holding {items} spans")


def bad_neighbour(workdir: Path, into_queue: bool) -> None:
    import os

    stack = Stack(workdir / "stack")
    try:
        jaeger = stack.start("jaeger", storage="memory")
        exporter = {
            "endpoint": jaeger.urls["otlp_grpc"],
            "tls": {"insecure": True},
            "sending_queue": {"num_consumers": 1},
            "batch": {"linger": "2s"},
        }
        if into_queue:
            bad_neighbour_in_queue(workdir / "exporter", exporter, jaeger.url)
            return
        config = {
            "receivers": {"otlp": {}},
            "exporters": {"otlp/jaeger": exporter},
            "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger"]}}},
        }
        collector = start_collector(config, workdir / "collector")
        try:
            good = [os.urandom(16) for _ in range(100)]
            with grpc.insecure_channel(collector.grpc_endpoint) as channel:
                export = channel.unary_unary(EXPORT)
                for i, trace_id in enumerate(good):
                    export(_request(trace_id), timeout=10)
                    if i == 49:
                        try:
                            answer = export(_request(b"\x01\x02\x03\x04\x05"), timeout=10)
                            bad_answer = f"OK, response {answer!r}"
                        except grpc.RpcError as error:
                            bad_answer = f"{error.code().name}: {error.details()}"
            found = _wait_for(jaeger.url, good)
            lines, items = _letters(collector.storage_dir)
            print(f"bad request answered: {bad_answer}")
            print(f"valid traces in Jaeger: {found} of {len(good)}")
            print(f"dead-letter lines: {lines} holding {items} spans")
        finally:
            collector.stop()
    finally:
        stack.down()


def flood(workdir: Path, calls: int) -> None:
    config = {
        "receivers": {"otlp": {}},
        "exporters": {"otlp/void": {"endpoint": f"127.0.0.1:{free_port()}", "tls": {"insecure": True}}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/void"]}}},
    }
    collector = start_collector(config, workdir / "collector")
    try:
        outcomes: Counter[str] = Counter()
        with_retry_info = 0
        lock = threading.Lock()
        go = threading.Event()
        body = _request(b"\x11" * 16)
        channel = grpc.insecure_channel(collector.grpc_endpoint)
        grpc.channel_ready_future(channel).result(timeout=10)
        export = channel.unary_unary(EXPORT)

        def one() -> None:
            nonlocal with_retry_info
            go.wait()
            try:
                export(body, timeout=60)
                code, hint = "OK", False
            except grpc.RpcError as error:
                code, hint = error.code().name, _has_retry_info(error)
            with lock:
                outcomes[code] += 1
                with_retry_info += hint

        threads = [threading.Thread(target=one) for _ in range(calls)]
        for thread in threads:
            thread.start()
        go.set()
        for thread in threads:
            thread.join()
        channel.close()
        refusals = calls - outcomes["OK"]
        print(f"calls: {calls}; outcomes: {dict(outcomes)}")
        print(f"refusals with RetryInfo: {with_retry_info} of {refusals}")
        counted = {
            labels: value
            for (name, labels), value in collector.metrics().items()
            if name == "meshwatch_receiver_refused_items_total" and value
        }
        print(f"collector's refused counter: {counted}")
    finally:
        collector.stop()


def reference_backlog(workdir: Path, spans: int) -> None:
    import os
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    import yaml

    from meshwatch.collector.testing import scrape
    from meshwatch.stack import binary

    stack = Stack(workdir / "stack")
    reference = None
    try:
        jaeger = stack.start("jaeger", storage="memory")
        exporter = {"endpoint": jaeger.urls["otlp_grpc"], "tls": {"insecure": True}}
        config = {
            "receivers": {"otlp": {"protocols": {"grpc": {}}}},
            "exporters": {"otlp/jaeger": exporter},
            "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger"]}}},
        }
        collector = start_collector(config, workdir / "collector")
        port, metrics_port = free_port(), free_port()
        reference_config = {
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{port}"}}}},
            "exporters": {
                "otlp": {
                    "endpoint": collector.grpc_endpoint,
                    "tls": {"insecure": True},
                    "sending_queue": {"num_consumers": 300, "queue_size": 100_000},
                }
            },
            "service": {
                "telemetry": {
                    "logs": {"level": "warn"},
                    "metrics": {
                        "level": "normal",
                        "readers": [
                            {"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": metrics_port}}}}
                        ],
                    },
                },
                "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp"]}},
            },
        }
        (workdir / "otelcol.yaml").write_text(yaml.safe_dump(reference_config))
        log = (workdir / "otelcol.log").open("wb")
        reference = subprocess.Popen(
            [str(binary("otelcol")), "--config", str(workdir / "otelcol.yaml")], stdout=log, stderr=subprocess.STDOUT
        )
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        export = channel.unary_unary(EXPORT)
        template = _request_of(b"\xa5" * 16, 10)
        acked: list[bytes] = []
        lock = threading.Lock()

        def send(_: int) -> None:
            trace_id = os.urandom(16)
            try:
                export(template.replace(b"\xa5" * 16, trace_id), timeout=30)
            except grpc.RpcError:
                return
            with lock:
                acked.append(trace_id)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(send, range(spans // 10)))
        channel.close()

        def reference_metric(name: str) -> float:
            values = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
            return sum(v for (n, _), v in values.items() if n == name)

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            sent = reference_metric("otelcol_exporter_sent_spans_total")
            failed = reference_metric("otelcol_exporter_send_failed_spans_total")
            if sent + failed >= len(acked) * 10:
                break
            time.sleep(2)

        def complete(trace_id: bytes) -> bool:
            try:
                with urllib.request.urlopen(f"{jaeger.url}/api/traces/{trace_id.hex()}", timeout=10) as response:
                    data = json.loads(response.read()).get("data") or []
            except urllib.error.HTTPError:
                return False
            return bool(data) and len({s["spanID"] for s in data[0]["spans"]}) == 10

        time.sleep(2)
        with ThreadPoolExecutor(8) as pool:
            found = sum(pool.map(complete, acked))
        refused = {
            labels: value
            for (name, labels), value in collector.metrics().items()
            if name == "meshwatch_receiver_refused_items_total" and value
        }
        print(f"spans acknowledged by the reference collector: {len(acked) * 10}")
        print(f"reference collector: sent {sent:.0f}, failed (dropped) {failed:.0f}")
        print(f"meshwatch refused: {refused}")
        print(f"traces complete in Jaeger: {found} of {len(acked)} ({(len(acked) - found) * 10} spans lost)")
        collector.stop()
    finally:
        if reference is not None:
            reference.terminate()
            reference.wait(30)
        stack.down()


def _request_of(trace_id: bytes, spans: int) -> bytes:
    request = ExportTraceServiceRequest.FromString(_request(trace_id))
    template = request.resource_spans[0].scope_spans[0].spans[0]
    for i in range(1, spans):
        span = request.resource_spans[0].scope_spans[0].spans.add()
        span.CopyFrom(template)
        span.span_id = (i + 1).to_bytes(8, "big")
    return request.SerializeToString()


def _has_retry_info(error: grpc.RpcError) -> bool:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["bad-neighbour", "flood", "reference-backlog"])
    parser.add_argument("--spans", type=int, default=30_000)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--into-queue", action="store_true", help="bad-neighbour: bypass the receiver")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshwatch-hostile-") as tmp:
        if args.what == "bad-neighbour":
            bad_neighbour(Path(tmp), args.into_queue)
        elif args.what == "flood":
            flood(Path(tmp), args.calls)
        else:
            reference_backlog(Path(tmp), args.spans)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
