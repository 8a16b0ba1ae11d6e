"""Benchmark: a FastAPI service bare, under opentelemetry-instrument, and under meshwatch-run.

One uvicorn worker serves ``GET /hello`` and ``GET /work`` (one downstream HTTP
call and one log line); ``wrk`` loads it on loopback. Both instrumented variants
export traces, metrics and logs over OTLP/gRPC to the same real receiver: the
reference OpenTelemetry Collector (``meshwatch-stack install otelcol``) with an
otlp receiver and nop exporters; its own counters prove each variant delivered
all three signals. Printed side by side: requests/s, p50/p99 latency, CPU µs per
request of the service process, peak RSS; then meshwatch with the collector
unreachable against reachable (throughput, RSS growth).

    .venv/bin/python bench/instrumentation/bench_instrumentation.py            # ≈ 9 min: 3 rounds + 2×60 s
    .venv/bin/python bench/instrumentation/bench_instrumentation.py --quick    # ≈ 2 min: 1 round, short runs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from meshwatch.stack import binary, free_port, wait_http

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV_BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results" / "instrumentation.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")

OTELCOL_CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
      http: {{endpoint: "127.0.0.1:{http}"}}
exporters:
  nop: {{}}
service:
  telemetry:
    logs: {{level: warn}}
    metrics:
      level: normal
      readers:
        - pull:
            exporter:
              prometheus: {{host: "127.0.0.1", port: {metrics}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [nop]}}
    metrics: {{receivers: [otlp], exporters: [nop]}}
    logs: {{receivers: [otlp], exporters: [nop]}}
"""


@dataclass
class Result:
    variant: str
    shape: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    peak_rss_mb: float
    requests: int
    errors: int = 0
    delivered: dict[str, float] = field(default_factory=dict)
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    duration_s: float = 0.0


# --- processes --------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHWATCH_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


def start_otelcol(workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    config = workdir / "otelcol.yaml"
    config.write_text(OTELCOL_CONFIG.format(**ports))
    log = (workdir / "otelcol.log").open("wb")
    proc = subprocess.Popen(
        [str(binary("otelcol")), f"--config={config}"], stdout=log, stderr=log, start_new_session=True
    )
    wait_http(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=60, is_alive=lambda: proc.poll() is None)
    return proc, ports


def start_meshwatch_collector(workdir: Path) -> tuple[object, dict[str, int]]:
    """The meshwatch collector with an otlp receiver and the debug exporter (one line per batch)."""
    from meshwatch.collector.testing import start_collector

    sink = {"receivers": ["otlp"], "exporters": ["debug"]}
    collector = start_collector(
        {
            "exporters": {"debug": {"verbosity": "basic"}},
            "service": {"pipelines": {"traces": sink, "metrics": sink, "logs": sink}},
        },
        workdir / "meshwatch-collector",
    )
    port = int(collector.grpc_endpoint.rsplit(":", 1)[1])
    return collector, {"grpc": port, "metrics": 0}


def otelcol_accepted(metrics_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    totals = {"spans": 0.0, "metric_points": 0.0, "log_records": 0.0}
    for line in text.splitlines():
        for key in totals:
            if line.startswith(f"otelcol_receiver_accepted_{key}"):
                totals[key] += float(line.rsplit(" ", 1)[1])
    return totals


def service_command(variant: str, port: int) -> list[str]:
    uvicorn = [
        "uvicorn",
        "service:app",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if variant == "uninstrumented":
        return uvicorn
    if variant == "opentelemetry-instrument":
        return ["opentelemetry-instrument", *uvicorn]
    return ["meshwatch-run", *uvicorn]


def service_env(variant: str, otlp_grpc: str, downstream: str) -> dict[str, str]:
    env = clean_env()
    env["BENCH_DOWNSTREAM"] = downstream
    if variant == "opentelemetry-instrument":
        # The documented way to get all three signals over OTLP/gRPC, otherwise defaults.
        env.update(
            OTEL_SERVICE_NAME="bench-otel",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="otlp",
            OTEL_LOGS_EXPORTER="otlp",
            OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="true",
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp_grpc,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_METRIC_EXPORT_INTERVAL="5000",
        )
    elif variant.startswith("meshwatch"):
        env.update(
            OTEL_SERVICE_NAME="bench-meshwatch",
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp_grpc,
            OTEL_METRIC_EXPORT_INTERVAL="5000",
        )
    return env


def start(argv: list[str], env: dict[str, str], port: int, out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/hello", timeout=60, is_alive=lambda: proc.poll() is None, what=argv[0])
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def service_pid(proc: subprocess.Popen[bytes]) -> int:
    """meshwatch-run and opentelemetry-instrument exec into the server, so the Popen pid is the server."""
    return proc.pid


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- load -------------------------------------------------------------------------

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def wrk(url: str, duration: float, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [str(binary("wrk")), "-t1", f"-c{connections}", f"-d{int(duration)}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    result["requests"] = float(re.search(r"(\d+) requests in", out).group(1))
    # the "Latency Distribution" lines, e.g. "     99%   12.34ms" (not the "… 90.50%" of the thread stats)
    result["p50_ms"] = _ms(re.search(r"^\s+50%\s+(\S+)$", out, re.M).group(1))
    result["p99_ms"] = _ms(re.search(r"^\s+99%\s+(\S+)$", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = float(errors.group(1)) if errors else 0.0
    if socket_errors:
        result["errors"] += sum(float(g) for g in socket_errors.groups())
    return result


def measure(
    variant: str,
    shape: str,
    *,
    endpoint: str,
    downstream: str,
    args: argparse.Namespace,
    workdir: Path,
    otelcol_metrics: int | None,
    duration: float,
) -> Result:
    port = free_port()
    out = workdir / f"{variant}-{shape}.log"
    before = otelcol_accepted(otelcol_metrics) if otelcol_metrics else {}
    proc = start(service_command(variant, port), service_env(variant, endpoint, downstream), port, out)
    pid = service_pid(proc)
    url = f"http://127.0.0.1:{port}/{shape}"
    try:
        wrk(url, args.warmup, args.connections)
        rss_start = status_mb(pid, "VmRSS")
        cpu_before = cpu_seconds(pid)
        load = wrk(url, duration, args.connections)
        cpu = cpu_seconds(pid) - cpu_before
        rss_end = status_mb(pid, "VmRSS")
        peak = status_mb(pid, "VmHWM")
    finally:
        stop(proc)
    delivered = {}
    if otelcol_metrics:
        after = otelcol_accepted(otelcol_metrics)
        delivered = {k: after[k] - before.get(k, 0.0) for k in after}
    result = Result(
        variant=variant,
        shape=shape,
        rps=load["rps"],
        p50_ms=load["p50_ms"],
        p99_ms=load["p99_ms"],
        cpu_us_per_req=cpu / max(load["requests"], 1) * 1e6,
        peak_rss_mb=peak,
        requests=int(load["requests"]),
        errors=int(load["errors"]),
        delivered=delivered,
        rss_start_mb=rss_start,
        rss_end_mb=rss_end,
        duration_s=duration,
    )
    print(
        f"  {variant:26} {shape:6} {result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
        f"  {result.cpu_us_per_req:6.0f} µs CPU/req  peak RSS {peak:5.0f} MB  errors {result.errors}"
        + (f"  delivered {json.dumps({k: int(v) for k, v in delivered.items()})}" if delivered else ""),
        flush=True,
    )
    return result


# --- report -----------------------------------------------------------------------


def median(runs: list[Result], variant: str, shape: str) -> Result:
    """The run with the median throughput (its latency and CPU figures come with it); peak RSS is the max."""
    mine = sorted((r for r in runs if r.variant == variant and r.shape == shape), key=lambda r: r.rps)
    chosen = mine[len(mine) // 2]
    chosen.peak_rss_mb = max(r.peak_rss_mb for r in mine)
    return chosen


VARIANTS = ("uninstrumented", "opentelemetry-instrument", "meshwatch-run")


def table(results: list[Result]) -> str:
    lines = [
        "| variant | shape | req/s | vs bare | p50 ms | p99 ms | CPU µs/req | peak RSS MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    bare = {r.shape: r.rps for r in results if r.variant == "uninstrumented"}
    for r in results:
        ratio = r.rps / bare[r.shape] if bare.get(r.shape) else float("nan")
        lines.append(
            f"| {r.variant} | /{r.shape} | {r.rps:,.0f} | {ratio:.2f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.cpu_us_per_req:,.0f} | {r.peak_rss_mb:.0f} |"
        )
    return "\n".join(lines)


def verdicts(results: list[Result], reachable: Result | None, unreachable: Result | None) -> list[str]:
    get = {(r.variant, r.shape): r for r in results}
    out = []
    bare, otel, mesh = (get.get((v, "hello")) for v in VARIANTS)
    if bare and otel and mesh:
        out.append(f"meshwatch /hello: {mesh.rps / bare.rps:.2f}× uninstrumented (target ≥ 0.65)")
        out.append(f"meshwatch /hello: {mesh.rps / otel.rps:.2f}× opentelemetry-instrument (target ≥ 1.6)")
        out.append(f"p99 /hello: meshwatch {mesh.p99_ms:.2f} ms vs opentelemetry-instrument {otel.p99_ms:.2f} ms")
    if reachable and unreachable:
        out.append(
            f"collector unreachable: {unreachable.rps:,.0f} req/s vs reachable {reachable.rps:,.0f} "
            f"({(unreachable.rps / reachable.rps - 1) * 100:+.1f}%, target within ±5%); "
            f"RSS {unreachable.rss_start_mb:.0f} → {unreachable.rss_end_mb:.0f} MB over {unreachable.duration_s:.0f} s "
            f"(+{unreachable.rss_end_mb - unreachable.rss_start_mb:.1f} MB, target < 50)"
        )
    return out


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = ["hello", "work"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    colors = {"uninstrumented": "#8c8c8c", "opentelemetry-instrument": "#d9822b", "meshwatch-run": "#2b7bd9"}
    width = 0.26
    for ax, (metric, label) in zip(
        axes,
        [("rps", "requests/s"), ("p99_ms", "p99 latency (ms)"), ("cpu_us_per_req", "CPU µs per request")],
        strict=True,
    ):
        for i, variant in enumerate(VARIANTS):
            values = [
                next((getattr(r, metric) for r in results if r.variant == variant and r.shape == s), 0) for s in shapes
            ]
            xs = [x + (i - 1) * width for x in range(len(shapes))]
            ax.bar(xs, values, width, label=variant, color=colors[variant])
        ax.set_xticks(range(len(shapes)), [f"/{s}" for s in shapes])
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.suptitle("FastAPI on uvicorn (1 worker), wrk on loopback, traces+metrics+logs over OTLP/gRPC")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds of load per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before measuring")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--unreachable-duration", type=float, default=60)
    parser.add_argument("--shapes", default="hello,work")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-unreachable", action="store_true")
    parser.add_argument(
        "--receiver",
        choices=("otelcol", "meshwatch"),
        default="otelcol",
        help="the OTLP endpoint every variant exports to: the reference OpenTelemetry Collector or meshwatch's",
    )
    parser.add_argument("--quick", action="store_true", help="one round of 8 s runs, 20 s unreachable run")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "instrumentation-benchmark.png")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where the raw results go (default bench/results/instrumentation.json, the committed full run)",
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.unreachable_duration, args.rounds = 8, 20, 1
    workdir = Path(tempfile.mkdtemp(prefix="meshwatch-bench-instr-"))
    print(f"workdir {workdir}; {os.cpu_count()} CPUs; wrk -t1 -c{args.connections}, {args.duration:.0f} s per run")
    if args.receiver == "meshwatch":
        collector, ports = start_meshwatch_collector(workdir)
    else:
        collector, ports = start_otelcol(workdir)
    endpoint = f"http://127.0.0.1:{ports['grpc']}"
    down_port = free_port()
    downstream = subprocess.Popen(
        ["uvicorn", "downstream:app", "--port", str(down_port), "--no-access-log", "--log-level", "warning"],
        cwd=HERE,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{down_port}/", timeout=60, is_alive=lambda: downstream.poll() is None)
    down_url = f"http://127.0.0.1:{down_port}/"
    runs: list[Result] = []
    reachable = unreachable = None
    try:
        # Rounds interleave the variants, so a burst of load from elsewhere on a shared
        # machine hits all of them alike; the table shows each variant's median round.
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number}/{args.rounds}")
            for shape in args.shapes.split(","):
                for variant in args.variants.split(","):
                    runs.append(
                        measure(
                            variant,
                            shape,
                            endpoint=endpoint,
                            downstream=down_url,
                            args=args,
                            workdir=workdir,
                            otelcol_metrics=ports["metrics"] or None,
                            duration=args.duration,
                        )
                    )
        results = [median(runs, v, sh) for sh in args.shapes.split(",") for v in args.variants.split(",")]
        if not args.no_unreachable:
            print(f"collector reachable vs unreachable, meshwatch-run /hello, {args.unreachable_duration:.0f} s each")
            reachable = measure(
                "meshwatch-run",
                "hello",
                endpoint=endpoint,
                downstream=down_url,
                args=args,
                workdir=workdir,
                otelcol_metrics=ports["metrics"],
                duration=args.unreachable_duration,
            )
            closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
            unreachable = measure(
                "meshwatch-run",
                "hello",
                endpoint=closed,
                downstream=down_url,
                args=args,
                workdir=workdir,
                otelcol_metrics=None,
                duration=args.unreachable_duration,
            )
            unreachable.variant = "meshwatch-run (collector unreachable)"
            drops = [ln for ln in (workdir / "meshwatch-run-hello.log").read_text().splitlines() if "dropped" in ln]
            if drops:
                print("  last drop report:", json.loads(drops[-1])["message"])
    finally:
        stop(downstream)
        if isinstance(collector, subprocess.Popen):
            stop(collector)
        else:
            collector.stop(timeout=20)  # type: ignore[attr-defined]
    print()
    print(table(results))
    print()
    for line in verdicts(results, reachable, unreachable):
        print(line)
    results_path = RESULTS if args.receiver == "otelcol" else RESULTS.with_name("instrumentation-meshwatch.json")
    results_path = args.output or results_path
    if args.receiver != "otelcol" and args.plot.name == "instrumentation-benchmark.png":
        args.plot = args.plot.with_name("instrumentation-benchmark-meshwatch-collector.png")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(
        json.dumps(
            {
                "results": [asdict(r) for r in results],
                "runs": [asdict(r) for r in runs],
                "reachable": asdict(reachable) if reachable else None,
                "unreachable": asdict(unreachable) if unreachable else None,
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            indent=2,
        )
    )
    try:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    except ImportError:
        print("matplotlib not installed: no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
