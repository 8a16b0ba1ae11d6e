"""Benchmark at equal work: bare, opentelemetry-instrument and meshwatch-run on FastAPI, Flask and Django.

Django's instrumentor under ``opentelemetry-instrument gunicorn mysite.wsgi`` needs
``DJANGO_SETTINGS_MODULE`` in the environment (without it every request answers 500:
``global_settings`` has no ``ROOT_URLCONF``), so every Django variant gets it.

Rows, each served by one worker process and loaded by ``wrk`` on loopback, ``GET /hello``:

* FastAPI on uvicorn (``service.py``);
* Flask on gunicorn, sync worker (``flask_service.py``);
* Django on gunicorn: a stock ``django-admin startproject mysite`` made in a temporary
  folder, with one ``/hello`` view added to its ``urls.py``.

Variants: ``bare``; ``opentelemetry-instrument`` at its defaults (for FastAPI that is three
spans per request: the server span and two ASGI ``send`` spans); ``opentelemetry-instrument``
with the ``send``/``receive`` spans excluded (one span per request, as meshwatch; FastAPI only,
the others make one span anyway): ``OTEL_PYTHON_FASTAPI_EXCLUDE_SPANS=send,receive`` is set,
but contrib 0.66 reads no such variable, so ``service_one_span.py`` passes ``exclude_spans`` to
the same instrumentor (auto FastAPI instrumentation disabled); ``meshwatch-run``; and, on
FastAPI, ``meshwatch-run`` with ``MESHWATCH_SDK_FAST_PATH=false`` (the fence's fallback to the
stock SDK parts); on Flask and Django, ``meshwatch-run`` with
``MESHWATCH_WSGI_MIDDLEWARE=false`` (the contrib Flask and Django instrumentors' server spans
instead of meshwatch's WSGI span, ``_wsgi.py``: what ``meshwatch-run`` did before it). Every
instrumented variant exports traces, metrics and logs over OTLP/gRPC to the reference
OpenTelemetry Collector (otlp receiver, nop exporters), with the same batch delay
(``OTEL_BSP_SCHEDULE_DELAY=500``); its ``otelcol_receiver_accepted_spans`` counter, which
counts every span it is sent (no de-duplication), gives the spans delivered per request
(warm-up included: the service is stopped after a short drain and the counter read). Rounds
interleave the variants; the table shows medians and the spread (min–max) of req/s. The raw
runs, the machine's load average before and after each, and the commit go to
``bench/results/instrumentation-equal-work.json``.

    .venv/bin/python bench/instrumentation/equal_work.py                 # ≈ 10 min: 5 rounds of 4 s runs
    .venv/bin/python bench/instrumentation/equal_work.py --rounds 1 --duration 2   # a smoke run
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench_instrumentation import VENV_BIN, clean_env, cpu_seconds, otelcol_accepted, start_otelcol, stop, wrk

from meshwatch.stack import free_port, wait_http

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = ROOT / "bench" / "results" / "instrumentation-equal-work.json"

FRAMEWORKS = ("fastapi", "flask", "django")
#: variant -> frameworks it runs on
VARIANTS = {
    "bare": FRAMEWORKS,
    "opentelemetry-instrument": FRAMEWORKS,
    "opentelemetry-instrument (exclude send,receive)": ("fastapi",),
    "meshwatch-run": FRAMEWORKS,
    "meshwatch-run (SDK fast path off)": ("fastapi",),
    "meshwatch-run (contrib WSGI instrumentor)": ("flask", "django"),
}
DRAIN_S = 2.0  # after the load: > OTEL_BSP_SCHEDULE_DELAY, so both SDKs' batches have gone out

DJANGO_VIEW = """

from django.http import JsonResponse  # noqa: E402 - added by the benchmark


def hello(request):
    return JsonResponse({"hello": "world"})


urlpatterns.append(path("hello", hello))
"""


@dataclass
class Run:
    framework: str
    variant: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int  # measured requests
    all_requests: int  # warm-up + measured: what the delivered spans are compared with
    errors: int
    cpu_us_per_req: float
    spans_delivered: float
    spans_per_request: float
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    extra: dict[str, str] = field(default_factory=dict)


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def make_django_site(workdir: Path) -> Path:
    """``django-admin startproject mysite`` as a new user runs it, plus a ``/hello`` view."""
    subprocess.run([str(VENV_BIN / "django-admin"), "startproject", "mysite"], cwd=workdir, check=True)
    urls = workdir / "mysite" / "mysite" / "urls.py"
    urls.write_text(urls.read_text() + DJANGO_VIEW)
    return workdir / "mysite"


def server(framework: str, variant: str, port: int, django_site: Path) -> tuple[list[str], Path]:
    if framework == "fastapi":
        module = "service_one_span" if "exclude" in variant else "service"
        argv = ["uvicorn", f"{module}:app", "--port", str(port), "--workers", "1", "--no-access-log"]
        return [*argv, "--log-level", "warning"], HERE
    gunicorn = ["gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "--log-level", "warning"]
    if framework == "flask":
        return [*gunicorn, "flask_service:app"], HERE
    return [*gunicorn, "mysite.wsgi"], django_site


def command(variant: str, argv: list[str]) -> list[str]:
    if variant == "bare":
        return argv
    if variant.startswith("opentelemetry-instrument"):
        return ["opentelemetry-instrument", *argv]
    return ["meshwatch-run", *argv]


def environment(framework: str, variant: str, endpoint: str) -> dict[str, str]:
    env = clean_env()
    env["BENCH_DOWNSTREAM"] = "http://127.0.0.1:9/"  # /hello never calls it
    if framework == "django":
        env["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
    if variant == "bare":
        return env
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_METRIC_EXPORT_INTERVAL="5000",
        OTEL_BSP_SCHEDULE_DELAY="500",
    )
    if variant.startswith("opentelemetry-instrument"):
        env.update(
            OTEL_SERVICE_NAME="bench-otel",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="otlp",
            OTEL_LOGS_EXPORTER="otlp",
            OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="true",
        )
        if "exclude" in variant:
            env["OTEL_PYTHON_FASTAPI_EXCLUDE_SPANS"] = "send,receive"
            env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "fastapi"  # service_one_span.py applies it
    else:
        env["OTEL_SERVICE_NAME"] = "bench-meshwatch"
        if "fast path off" in variant:
            env["MESHWATCH_SDK_FAST_PATH"] = "false"
        if "contrib WSGI" in variant:
            env["MESHWATCH_WSGI_MIDDLEWARE"] = "false"
    return env


def worker_pid(proc: subprocess.Popen[bytes], framework: str) -> int:
    """uvicorn serves in the launched process; gunicorn in its one worker (the master's child)."""
    if framework == "fastapi":
        return proc.pid
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return int(children[0]) if children else proc.pid


def measure(framework: str, variant: str, round_number: int, args: argparse.Namespace, ctx: dict) -> Run:
    port = free_port()
    argv, cwd = server(framework, variant, port, ctx["django_site"])
    log = ctx["workdir"] / f"{framework}-{variant.replace(' ', '_')}-{round_number}.log"
    load_before = os.getloadavg()
    spans_before = otelcol_accepted(ctx["metrics_port"])["spans"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command(variant, argv),
            cwd=cwd,
            env=environment(framework, variant, ctx["endpoint"]),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/hello"
    try:
        wait_http(url, timeout=90, is_alive=lambda: proc.poll() is None, what=f"{framework} {variant}")
        warm = wrk(url, args.warmup, args.connections)
        pid = worker_pid(proc, framework)
        cpu_before = cpu_seconds(pid)
        load = wrk(url, args.duration, args.connections)
        cpu = cpu_seconds(pid) - cpu_before
        time.sleep(DRAIN_S)
    finally:
        stop(proc)
    time.sleep(0.5)  # the collector's counter is updated once the last export is answered
    delivered = otelcol_accepted(ctx["metrics_port"])["spans"] - spans_before
    # wait_http's readiness probes are requests too (each one span, when instrumented)
    all_requests = int(warm["requests"] + load["requests"])
    run = Run(
        framework=framework,
        variant=variant,
        round=round_number,
        rps=load["rps"],
        p50_ms=load["p50_ms"],
        p99_ms=load["p99_ms"],
        requests=int(load["requests"]),
        all_requests=all_requests,
        errors=int(load["errors"] + warm["errors"]),
        cpu_us_per_req=cpu / max(load["requests"], 1) * 1e6,
        spans_delivered=delivered,
        spans_per_request=delivered / max(all_requests, 1),
        load_before=load_before,
        load_after=os.getloadavg(),
    )
    print(
        f"  {framework:7} {variant:48} {run.rps:7.0f} req/s  p99 {run.p99_ms:6.2f} ms  {run.cpu_us_per_req:5.0f} µs/req"
        f"  spans/req {run.spans_per_request:5.2f}  errors {run.errors}  load {load_before[0]:.1f}",
        flush=True,
    )
    return run


def summary(runs: list[Run]) -> list[dict]:
    rows = []
    for framework in FRAMEWORKS:
        for variant in VARIANTS:
            mine = [r for r in runs if r.framework == framework and r.variant == variant]
            if not mine:
                continue
            rps = [r.rps for r in mine]
            rows.append(
                {
                    "framework": framework,
                    "variant": variant,
                    "rounds": len(mine),
                    "rps_median": statistics.median(rps),
                    "rps_min": min(rps),
                    "rps_max": max(rps),
                    "p99_ms_median": statistics.median(r.p99_ms for r in mine),
                    "cpu_us_per_req_median": statistics.median(r.cpu_us_per_req for r in mine),
                    "spans_per_request_median": statistics.median(r.spans_per_request for r in mine),
                    "spans_per_request_min": min(r.spans_per_request for r in mine),
                    "errors": sum(r.errors for r in mine),
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| framework | variant | req/s (median) | spread (min–max) | vs bare | p99 ms | CPU µs/req | spans/req |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    bare = {r["framework"]: r["rps_median"] for r in rows if r["variant"] == "bare"}
    for r in rows:
        spans = "—" if r["variant"] == "bare" else f"{r['spans_per_request_median']:.2f}"
        out.append(
            f"| {r['framework']} | {r['variant']} | {r['rps_median']:,.0f} | {r['rps_min']:,.0f}–{r['rps_max']:,.0f} "
            f"| {r['rps_median'] / bare[r['framework']]:.2f} | {r['p99_ms_median']:.1f} "
            f"| {r['cpu_us_per_req_median']:,.0f} | {spans} |"
        )
    return "\n".join(out)


def verdicts(rows: list[dict]) -> list[str]:
    get = {(r["framework"], r["variant"]): r for r in rows}
    out = []
    for framework in FRAMEWORKS:
        bare, mesh = get.get((framework, "bare")), get.get((framework, "meshwatch-run"))
        same_spans = get.get((framework, "opentelemetry-instrument (exclude send,receive)")) or get.get(
            (framework, "opentelemetry-instrument")
        )
        if not (bare and mesh and same_spans):
            continue
        out.append(
            f"{framework}: meshwatch-run {mesh['rps_median'] / bare['rps_median']:.2f}× bare (target ≥ 0.75), "
            f"{mesh['rps_median'] / same_spans['rps_median']:.2f}× {same_spans['variant']} at "
            f"{same_spans['spans_per_request_median']:.2f} vs {mesh['spans_per_request_median']:.2f} spans/request "
            "(target ≥ 2)"
        )
    for framework in ("flask", "django"):
        contrib, mesh = (
            get.get((framework, "meshwatch-run (contrib WSGI instrumentor)")),
            get.get((framework, "meshwatch-run")),
        )
        if contrib and mesh:
            out.append(
                f"{framework}: meshwatch's WSGI span {mesh['rps_median'] / contrib['rps_median']:.2f}× the req/s "
                f"of the contrib instrumentor's under meshwatch-run ({mesh['cpu_us_per_req_median']:.0f} vs "
                f"{contrib['cpu_us_per_req_median']:.0f} µs CPU per request)"
            )
    fallback = get.get(("fastapi", "meshwatch-run (SDK fast path off)"))
    mesh = get.get(("fastapi", "meshwatch-run"))
    if fallback and mesh:
        cost = 1 - fallback["rps_median"] / mesh["rps_median"]
        out.append(
            f"fastapi: the fence's fallback (stock SDK parts) costs {cost:.0%}"
            f" of meshwatch-run's req/s ({fallback['cpu_us_per_req_median']:.0f} vs "
            f"{mesh['cpu_us_per_req_median']:.0f} µs CPU per request)"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4, help="seconds of measured load per run")
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="meshwatch-bench-equal-"))
    frameworks = args.frameworks.split(",")
    commit_at_start = _commit()  # and at the end: a commit landing mid-run shows as two
    started = time.time()
    print(f"workdir {workdir}; {os.cpu_count()} CPUs; load {os.getloadavg()}; wrk -t1 -c{args.connections}")
    collector, ports = start_otelcol(workdir)
    ctx = {
        "workdir": workdir,
        "endpoint": f"http://127.0.0.1:{ports['grpc']}",
        "metrics_port": ports["metrics"],
        "django_site": make_django_site(workdir),
    }
    runs: list[Run] = []
    try:
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number}/{args.rounds}")
            order = [(f, v) for f in frameworks for v, fs in VARIANTS.items() if f in fs]
            if round_number % 2 == 0:
                order.reverse()  # alternate the order, so a drift in load is not always on the same variant
            for framework, variant in order:
                runs.append(measure(framework, variant, round_number, args, ctx))
    finally:
        stop(collector)
    rows = summary(runs)
    print()
    print(table(rows))
    print()
    for line in verdicts(rows):
        print(line)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "commit": commit_at_start,
                "commit_at_end": _commit(),
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "cpus": os.cpu_count(),
                "wall_s": round(time.time() - started),
                "summary": rows,
                "verdicts": verdicts(rows),
                "runs": [asdict(r) for r in runs],
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            indent=2,
        )
    )
    print(f"raw results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
