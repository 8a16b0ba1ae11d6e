"""What one unary call costs grpcio's server, threaded against asyncio, with a sequential client.

The OTLP/gRPC receiver runs on ``grpc.server`` with a thread pool; an asyncio server
(``grpc.aio``) was proposed to save thread hops (issue 17). This measures the server
machinery alone, each server in its own process with a handler that does no work:

* ``threaded``       ``grpc.server(ThreadPoolExecutor(16))``, as the receiver runs today
* ``aio``            ``grpc.aio.server()``, the handler on the event loop
* ``aio-executor``   ``grpc.aio.server()``, the handler in ``run_in_executor`` (what the
  receiver would need: its pipeline blocks on the queue's fsync, which must not stop the loop)

One client, one 40 kB request in flight (a 100-span OTLP request's size); per mode the
server process's CPU per call (user+system from /proc) and the client's p50/p99. Modes run
interleaved, the order reversed every other round.

    .venv/bin/python bench/collector/grpc_server_modes.py [--calls 3000] [--rounds 3]

Raw figures go to ``bench/results/grpc-server-modes.json`` with the commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).parent))
from _load import ProcStats
from queue_fsync_latency import ROOT, _commit

from meshwatch.collector.testing import free_port

RESULTS = ROOT / "bench" / "results" / "grpc-server-modes.json"
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
MODES = ("threaded", "aio", "aio-executor")


def _threaded(port: int, ready: Any) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(lambda request, context: b"")}
    )
    server = grpc.server(futures.ThreadPoolExecutor(16), handlers=[handler])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    ready.set()
    server.wait_for_termination()


def _aio(port: int, ready: Any, executor: bool) -> None:
    async def main() -> None:
        pool = futures.ThreadPoolExecutor(16)
        loop = asyncio.get_running_loop()

        async def export(request: bytes, context: Any) -> bytes:
            if executor:
                await loop.run_in_executor(pool, len, request)
            return b""

        handler = grpc.method_handlers_generic_handler(SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)})
        server = grpc.aio.server(handlers=[handler])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


def _serve(mode: str, port: int, ready: Any) -> None:
    if mode == "threaded":
        _threaded(port, ready)
    else:
        _aio(port, ready, executor=mode == "aio-executor")


def one(mode: str, calls: int) -> dict[str, Any]:
    port = free_port()
    ready = mp.Event()
    server = mp.Process(target=_serve, args=(mode, port, ready), daemon=True)
    server.start()
    ready.wait(30)
    body = os.urandom(40_000)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    export = channel.unary_unary(f"/{SERVICE}/Export")
    try:
        for _ in range(300):
            export(body, timeout=10)
        stats = ProcStats(server.pid)
        cpu_before = stats.cpu_seconds()
        latencies = []
        for _ in range(calls):
            started = time.perf_counter()
            export(body, timeout=10)
            latencies.append((time.perf_counter() - started) * 1000)
        cpu = stats.cpu_seconds() - cpu_before
    finally:
        channel.close()
        server.terminate()
        server.join(10)
    latencies.sort()
    return {
        "mode": mode,
        "calls": calls,
        "server_cpu_us_per_call": round(cpu / calls * 1e6, 1),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(latencies[int(0.99 * len(latencies))], 3),
        "loadavg": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started_on = _commit()
    runs = []
    for round_ in range(args.rounds):
        for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
            run = {"round": round_, **one(mode, args.calls)}
            runs.append(run)
            print(
                f"round {round_} {mode:<13} {run['server_cpu_us_per_call']:>7.1f} µs server CPU/call  "
                f"p50 {run['p50_ms']:.3f} ms  p99 {run['p99_ms']:.3f} ms  load {run['loadavg'][0]:.1f}",
                flush=True,
            )
    summary = {}
    for mode in MODES:
        rows = [r for r in runs if r["mode"] == mode]
        summary[mode] = {
            key: {
                "median": statistics.median(r[key] for r in rows),
                "min": min(r[key] for r in rows),
                "max": max(r[key] for r in rows),
            }
            for key in ("server_cpu_us_per_call", "p50_ms", "p99_ms")
        }
        cpu = summary[mode]["server_cpu_us_per_call"]
        print(f"{mode:<13} median {cpu['median']:.1f} µs/call ({cpu['min']:.1f}–{cpu['max']:.1f})")
    record = {"summary": summary, "runs": runs, "commit": started_on, "commit_at_end": _commit(), "args": vars(args)}
    record["args"] = {k: str(v) for k, v in vars(args).items()}
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"raw results: {args.output}")


if __name__ == "__main__":
    main()
