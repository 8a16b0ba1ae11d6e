"""Instructions per request, bare vs meshwatch-run vs opentelemetry-instrument, counted by callgrind.

Wall-clock benchmarks on a shared 2-core machine swing with everyone else's load;
instruction counts do not. Each variant runs ``asgi_driver.py`` (the benchmark's
FastAPI service driven in-process through its ASGI interface, ``GET /hello`` by
default) under ``valgrind --tool=callgrind`` twice, with ``--base`` and with
``--base + --requests`` requests; the difference divided by ``--requests`` is the
cost of one request in steady state, with start-up, imports and the exit flush
cancelled out. Both instrumented variants export traces, metrics and logs over
OTLP/gRPC to the reference OpenTelemetry Collector (its own process, not counted),
with batching by size only (the batch delays are set long, since everything runs
~50× slower under valgrind; under real load batches fill to 512 well within the
1 s delay anyway), and every thread of the service process is counted, so span
export and encoding are in the figure.

``--mode server`` counts uvicorn as well: the service runs under callgrind with
``uvicorn --workers 1`` and a client outside callgrind sends the requests over
``--connections`` keep-alive connections; the ratio bare/instrumented of these
figures is what bounds the throughput ratio (the kernel's share is not counted).

    .venv/bin/python bench/instrumentation/callgrind_per_request.py                 # ≈ 6 min
    .venv/bin/python bench/instrumentation/callgrind_per_request.py --mode server   # ≈ 8 min
    .venv/bin/python bench/instrumentation/callgrind_per_request.py --profile       # pyinstrument, no valgrind
    .venv/bin/python bench/instrumentation/callgrind_per_request.py --env OTEL_TRACES_EXPORTER=none  # export's share
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_instrumentation import HERE, VARIANTS, VENV_BIN, service_env, start_otelcol, stop

from meshwatch.stack import free_port, wait_http

#: Long batch delays: exports happen when a batch of 512 is full (and once at exit), as under real load.
_DETERMINISTIC = {
    "OTEL_BSP_SCHEDULE_DELAY": "600000",
    "OTEL_BLRP_SCHEDULE_DELAY": "600000",
    "OTEL_METRIC_EXPORT_INTERVAL": "600000",
}
_COLLECTED = re.compile(r"Collected : (\d+)")


def launcher(variant: str) -> list[str]:
    if variant == "uninstrumented":
        return []
    if variant == "opentelemetry-instrument":
        return [str(VENV_BIN / "opentelemetry-instrument")]
    return [str(VENV_BIN / "meshwatch-run")]


def valgrind(out: Path) -> list[str]:
    exe = shutil.which("valgrind")
    if exe is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    return [exe, "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"]


#: ``--env NAME=VALUE`` settings, applied to every variant (e.g. ``OTEL_TRACES_EXPORTER=none`` to price export).
_EXTRA_ENV: dict[str, str] = {}


def environment(variant: str, endpoint: str) -> dict[str, str]:
    env = service_env(variant, endpoint, "http://127.0.0.1:9/")
    env.update(_DETERMINISTIC)
    env["PYTHONHASHSEED"] = "0"
    env.update(_EXTRA_ENV)
    return env


def instructions(stderr: str, what: str) -> int:
    match = _COLLECTED.search(stderr)
    if not match:
        raise RuntimeError(f"{what}: no callgrind total in its output:\n{stderr[-3000:]}")
    return int(match.group(1))


def run_asgi(variant: str, count: int, path: str, endpoint: str, workdir: Path) -> int:
    """Total instructions of one process serving ``count`` requests in-process."""
    out = workdir / f"{variant}-{count}.callgrind"
    argv = [*launcher(variant), *valgrind(out), sys.executable, str(HERE / "asgi_driver.py"), str(count), path]
    proc = subprocess.run(argv, cwd=HERE, env=environment(variant, endpoint), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} ({count} requests) failed:\n{proc.stderr[-3000:]}")
    return instructions(proc.stderr, f"{variant} ({count} requests)")


def _client(port: int, path: str, count: int, connections: int) -> None:
    """``count`` sequential-per-connection GETs over keep-alive connections, round robin."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=600) for _ in range(connections)]
    for i in range(count):
        conn = conns[i % connections]
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}")
    for conn in conns:
        conn.close()


def run_server(variant: str, count: int, path: str, endpoint: str, workdir: Path, *, connections: int) -> int:
    """Total instructions of a uvicorn process that served ``count`` requests (plus one readiness probe)."""
    out = workdir / f"server-{variant}-{count}.callgrind"
    port = free_port()
    uvicorn = [sys.executable, "-m", "uvicorn", "service:app", "--port", str(port), "--workers", "1"]
    uvicorn += ["--no-access-log", "--log-level", "warning"]
    argv = [*launcher(variant), *valgrind(out), *uvicorn]
    log = workdir / f"server-{variant}-{count}.log"
    with log.open("w") as stream:
        proc = subprocess.Popen(
            argv, cwd=HERE, env=environment(variant, endpoint), stdout=stream, stderr=stream, start_new_session=True
        )
    try:
        wait_http(f"http://127.0.0.1:{port}{path}", timeout=600, is_alive=lambda: proc.poll() is None, what=variant)
        _client(port, path, count, connections)
    finally:
        stop(proc, timeout=600)
    return instructions(log.read_text(errors="replace"), f"{variant} server ({count} requests)")


def profile(variants: list[str], path: str, count: int, endpoint: str) -> None:
    for variant in variants:
        print(f"=== {variant}: pyinstrument, {count} requests to {path}", flush=True)
        argv = [*launcher(variant), sys.executable, str(HERE / "asgi_driver.py"), str(count), path, "--profile"]
        subprocess.run(argv, cwd=HERE, env=environment(variant, endpoint), check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests measured (the difference of two runs)")
    parser.add_argument("--base", type=int, default=200, help="requests in the shorter run (warms every cache)")
    parser.add_argument("--path", default="/hello")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--mode", choices=("asgi", "server"), default="asgi")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections (server mode)")
    parser.add_argument("--profile", action="store_true", help="print a pyinstrument profile per variant instead")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for every variant"
    )
    parser.add_argument("--output", help="raw counts as JSON, with the commit (e.g. bench/results/callgrind.json)")
    args = parser.parse_args()
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env {item!r}: expected NAME=VALUE")
        _EXTRA_ENV[name] = value
    variants = args.variants.split(",")
    recorder = None
    if args.output:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "collector"))
        from _results import Recorder

        recorder = Recorder("bench/instrumentation/callgrind_per_request.py " + " ".join(sys.argv[1:]))
    workdir = Path(tempfile.mkdtemp(prefix="meshwatch-callgrind-"))
    collector, ports = start_otelcol(workdir)
    endpoint = f"http://127.0.0.1:{ports['grpc']}"
    try:
        if args.profile:
            profile(variants, args.path, max(args.requests, 2000), endpoint)
            return 0
        print(
            f"callgrind, {args.mode} mode, GET {args.path}: ({args.base + args.requests} − {args.base}) requests"
            f" / {args.requests}; workdir {workdir}",
            flush=True,
        )
        per_request: dict[str, float] = {}
        for variant in variants:
            started = time.monotonic()
            totals = []
            for count in (args.base, args.base + args.requests):
                if args.mode == "asgi":
                    totals.append(run_asgi(variant, count, args.path, endpoint, workdir))
                else:
                    totals.append(
                        run_server(variant, count, args.path, endpoint, workdir, connections=args.connections)
                    )
            per_request[variant] = (totals[1] - totals[0]) / args.requests
            print(
                f"  {variant:26} {per_request[variant] / 1000:8.1f} k instructions/request"
                f"  (runs: {totals[0]:,} and {totals[1]:,}; {time.monotonic() - started:.0f} s)",
                flush=True,
            )
    finally:
        stop(collector)
    print()
    print("| variant | instructions per request | extra over bare | bare ÷ variant |")
    print("| --- | ---: | ---: | ---: |")
    bare = per_request.get("uninstrumented")
    for variant, value in per_request.items():
        extra = f"{(value - bare) / 1000:,.0f} k" if bare else "—"
        ratio = f"{bare / value:.2f}" if bare else "—"
        print(f"| {variant} | {value / 1000:,.0f} k | {extra} | {ratio} |")
    if recorder is not None:
        recorder.write(
            Path(args.output),
            {
                "mode": args.mode,
                "path": args.path,
                "requests": args.requests,
                "base": args.base,
                "env": dict(_EXTRA_ENV),
                "instructions_per_request": per_request,
            },
        )
    if bare and "meshwatch-run" in per_request:
        budget = bare / 0.65 - bare
        print(
            f"\nmeshwatch extra: {(per_request['meshwatch-run'] - bare) / 1000:,.0f} k; the 0.65× target allows"
            f" {budget / 1000:,.0f} k extra on this {args.mode}-mode baseline"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
