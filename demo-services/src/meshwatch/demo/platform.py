"""The whole demo platform on one machine, without Docker: backends, collector, on-call, mesh, load.

Everything is started through the stack runner (:class:`meshwatch.stack.Stack`),
so it lands in one state file and ``meshwatch-stack down`` / ``meshwatch-demo down``
stop all of it by PID. The order follows the data: backends first, the console that
shows them (where Prometheus' links point), then the collector that feeds them, the
on-call webhook Alertmanager calls, the services (callees before callers) and last
the load. :meth:`Platform.wait_for_data` then waits until traces, every service's
metrics and logs are queryable, so "ready" means a user sees data, not just open ports.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshwatch.stack import Server, Stack, StackError, free_port

from .config import DEFAULT_PORTS, SERVICES, env_name

__all__ = [
    "PlatformOptions",
    "Platform",
    "find_repo",
    "http_json",
    "rss_by_server",
    "services_without_metrics",
    "COLLECTOR_PORTS",
    "CONSOLE_PORT",
    "DEMO_SERVICES",
    "HTTP_SERVICES",
    "PROCESSES",
]

DEMO_SERVICES = SERVICES
#: The services that answer the mesh's HTTP requests (notifications only consumes messages).
HTTP_SERVICES = tuple(s for s in SERVICES if s != "notifications")
#: ``meshwatch-dashboards console``'s usual port; Prometheus' links (alerts' generatorURL) point there.
CONSOLE_PORT = 3001
#: The collector's usual ports (telemetry contract): OTLP gRPC/HTTP, self-metrics, Prometheus exporter.
COLLECTOR_PORTS = {"otlp_grpc": 4317, "otlp_http": 4318, "telemetry": 8888, "prometheus": 8889}
ONCALL_PORT = 9095
LOADGEN_PORT = 8089
#: Propagators per service: payments speaks both formats, fraud (the legacy service) only Jaeger's.
PROPAGATORS = {"payments": "tracecontext,baggage,jaeger", "fraud": "jaeger"}
#: What the platform runs with ``run_process`` on top of the stack's backends, in start order.
PROCESSES = ("console", "collector", "oncall", *DEMO_SERVICES, "loadgen")


def rss_by_server(servers: dict[str, Server]) -> dict[str, int]:
    """Resident memory (bytes) of each server: the sum over every process of its process group.

    The runner starts each server as a session leader, so its group holds all it
    spawned (Elasticsearch's launcher and JVM, ``meshwatch-run``'s child).
    """
    groups = {server.pid: name for name, server in servers.items()}
    totals = dict.fromkeys(servers, 0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pgrp = int(fields[2])  # after "pid (comm)": state ppid pgrp …
            if pgrp not in groups:
                continue
            rss_pages = int(fields[21])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        totals[groups[pgrp]] += rss_pages * os.sysconf("SC_PAGE_SIZE")
    return totals


def services_without_metrics(red_jobs: set[str], span_services: set[str]) -> list[str]:
    """The demo services the dashboards would still draw empty: an HTTP service without RED
    metrics (its ``job``), or any service without span metrics (its ``service_name``)."""
    return sorted({*(set(HTTP_SERVICES) - red_jobs), *(set(DEMO_SERVICES) - span_services)})


def find_repo() -> Path:
    """The meshwatch checkout (collector config, alert rules): ``MESHWATCH_REPO``, the cwd, or this file's."""
    candidates = [os.environ.get("MESHWATCH_REPO"), os.getcwd(), str(Path(__file__).resolve().parents[4])]
    for candidate in candidates:
        if candidate and (Path(candidate) / "alerts" / "rules").is_dir():
            return Path(candidate)
    raise StackError("cannot find the meshwatch checkout: run from it, or set MESHWATCH_REPO=/path/to/meshwatch")


def http_json(url: str, *, method: str = "GET", body: Any = None, timeout: float = 10.0) -> Any:
    """A small JSON-over-HTTP call (stdlib only, so the CLI starts fast)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


@dataclass
class PlatformOptions:
    repo: Path = field(default_factory=find_repo)
    #: Load generator: requests per second and how long (0: until stopped).
    rate: float = 5.0
    load_duration: float = 0.0
    #: How often services export metrics and Prometheus scrapes (short is lively, long is cheap).
    metric_interval_ms: int = 5000
    scrape_interval: str = "5s"
    #: Use the usual ports when free (a user's demo) or any free port (tests).
    fixed_ports: bool = True
    es_heap: str = "512m"
    #: Where Jaeger keeps traces: the platform's Elasticsearch (they outlive a Jaeger restart) or memory.
    jaeger_storage: str = "elasticsearch"
    python: str = sys.executable
    progress: Callable[[str], None] = field(default=lambda message: print(f"meshwatch-demo: {message}", flush=True))

    @property
    def collector_config(self) -> Path:
        return self.repo / "collector" / "collector.yaml"

    @property
    def slo_spec(self) -> Path:
        return self.repo / "alerts" / "slos.yaml"

    @property
    def runbooks(self) -> Path:
        return self.repo / "docs" / "runbooks"


class Platform:
    """Starts and describes the demo on a :class:`Stack` (which may already run some backends)."""

    def __init__(self, stack: Stack, options: PlatformOptions | None = None) -> None:
        self.stack = stack
        self.options = options or PlatformOptions()

    # --- helpers ---------------------------------------------------------------------

    def _say(self, message: str) -> None:
        self.options.progress(message)

    def _port(self, usual: int) -> int:
        return free_port(usual if self.options.fixed_ports else None)

    def _bin(self, name: str) -> str:
        """A console script of this virtualenv (beside the running Python), else on PATH."""
        beside = Path(self.options.python).parent / name
        found = str(beside) if beside.exists() else shutil.which(name)
        if not found:
            raise StackError(f"{name} is not installed: run `make venv` (or pip install -e ./<its distribution>)")
        return found

    def _step(self, what: str, start: Callable[[], Server]) -> Server:
        began = time.monotonic()
        self._say(f"starting {what}…")
        server = start()
        self._say(f"  {what} ready in {time.monotonic() - began:.1f}s  {server.url}")
        return server

    def server(self, name: str) -> Server:
        try:
            return self.stack.servers[name]
        except KeyError:
            raise StackError(f"{name} is not running in {self.stack.state_dir}") from None

    # --- start ----------------------------------------------------------------------

    def up(self) -> dict[str, str]:
        """Start everything that is not running yet, wait for data, return the URLs to show."""
        began = time.monotonic()
        self.start_backends()
        self.start_console()
        self.start_collector()
        self.start_oncall()
        self.configure_alerting()
        self.start_services()
        self.start_load()
        self.wait_for_data()
        self._say(f"platform up in {time.monotonic() - began:.0f}s")
        return self.urls()

    def start_backends(self) -> None:
        opts = self.options
        # Chosen before Prometheus starts: it writes this origin into every alert's generatorURL.
        console = f"http://127.0.0.1:{self._port(CONSOLE_PORT)}"
        self._step("elasticsearch (≈20-60 s)", lambda: self.stack.start("elasticsearch", heap=opts.es_heap))
        # Elasticsearch first: Jaeger keeps its traces there (index prefix meshwatch-traces).
        self._step(
            f"jaeger (traces in {opts.jaeger_storage})",
            lambda: self.stack.start("jaeger", storage=opts.jaeger_storage),
        )
        self._step("alertmanager", lambda: self.stack.start("alertmanager"))
        self._step(
            "prometheus",
            lambda: self.stack.start(
                "prometheus",
                scrape_interval=opts.scrape_interval,
                scrape_timeout=opts.scrape_interval,  # Prometheus refuses a timeout longer than the interval
                external_url=console,
            ),  # its rules come with configure_alerting, once the on-call URL they link to is known
        )
        self._step("redis", lambda: self.stack.start("redis"))
        self._step("nats (JetStream)", lambda: self.stack.start("nats"))

    def console_port(self) -> int:
        """The console's port: the one Prometheus' links point at, so an alert's generatorURL opens it.

        Prometheus may run already (``make stack``, a test session) with links elsewhere (its
        default is its own, UI-less address); then the console takes its usual port and says so.
        """
        prometheus = self.server("prometheus")
        flags = http_json(f"{prometheus.url}/api/v1/status/flags")["data"]
        linked = urlsplit(flags.get("web.external-url", ""))
        ours = linked.hostname == "127.0.0.1" and linked.port and linked.port != prometheus.ports["http"]
        if ours and free_port(linked.port) == linked.port:
            return linked.port
        port = self._port(CONSOLE_PORT)
        self._say(
            f"  note: alerts' generatorURL points at {flags.get('web.external-url') or 'Prometheus'}, not at the"
            f" console on port {port} (Prometheus ran before the demo, or that port is taken);"
            " `make demo-down && make demo` points them at the console"
        )
        return port

    def start_console(self) -> Server:
        if "console" in self.stack.servers:
            return self.stack.servers["console"]
        port = self.console_port()
        backends = ("prometheus", "jaeger", "elasticsearch", "alertmanager")
        argv = [self._bin("meshwatch-dashboards"), "console", "--port", str(port), "--quiet"]
        for name in backends:
            argv += [f"--{name}", self.server(name).url]
        return self._step(
            "console",
            lambda: self.stack.run_process(
                "console",
                argv,
                ready_url=f"http://127.0.0.1:{port}/",
                urls={"http": f"http://127.0.0.1:{port}"},
                ports={"http": port},
                timeout=60,
                hint="the console is `meshwatch-dashboards console` (pip install -e ./dashboards); see its log",
            ),
        )

    def collector_env(self, ports: dict[str, int]) -> dict[str, str]:
        """What the default collector config reads from the environment: where the backends are."""
        jaeger, es = self.server("jaeger"), self.server("elasticsearch")
        return {
            "MESHWATCH_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{ports['otlp_grpc']}",
            "MESHWATCH_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{ports['otlp_http']}",
            "MESHWATCH_COLLECTOR_METRICS_ADDRESS": f"127.0.0.1:{ports['telemetry']}",
            "MESHWATCH_PROMETHEUS_EXPORTER_ENDPOINT": f"127.0.0.1:{ports['prometheus']}",
            "MESHWATCH_JAEGER_OTLP_ENDPOINT": jaeger.urls["otlp_grpc"].removeprefix("http://"),
            "MESHWATCH_ELASTICSEARCH_URL": es.url,
            "MESHWATCH_STORAGE_DIR": str(self.stack.state_dir / "collector" / "queue"),
        }

    def start_collector(self) -> Server:
        if "collector" in self.stack.servers:
            return self.stack.servers["collector"]
        ports = {name: self._port(usual) for name, usual in COLLECTOR_PORTS.items()}
        config = self.options.collector_config
        if not config.exists():
            raise StackError(f"the collector's default config {config} is missing")
        server = self._step(
            "meshwatch collector",
            lambda: self.stack.run_process(
                "collector",
                [self._bin("meshwatch-collector"), "--config", str(config)],
                ready_url=f"http://127.0.0.1:{ports['telemetry']}/healthz",
                urls={
                    "otlp_grpc": f"http://127.0.0.1:{ports['otlp_grpc']}",
                    "otlp_http": f"http://127.0.0.1:{ports['otlp_http']}",
                    "http": f"http://127.0.0.1:{ports['telemetry']}",
                    "metrics": f"http://127.0.0.1:{ports['telemetry']}/metrics",
                    "prometheus_exporter": f"http://127.0.0.1:{ports['prometheus']}/metrics",
                },
                ports=ports,
                env=self.collector_env(ports),
                timeout=60,
                hint="check collector/collector.yaml and the collector's log",
            ),
        )
        self.scrape_collector(server)
        return server

    def scrape_collector(self, collector: Server) -> None:
        """Prometheus scrapes the exporter with honor_labels (services' job/instance) and the self-metrics."""
        prometheus = self.server("prometheus")
        prometheus.add_scrape_target(
            "demo-collector-exporter", f"127.0.0.1:{collector.ports['prometheus']}", honor_labels=True
        )
        prometheus.add_scrape_target(
            "demo-collector-self", f"127.0.0.1:{collector.ports['telemetry']}", {"job": "meshwatch-collector"}
        )

    def start_oncall(self) -> Server:
        if "oncall" in self.stack.servers:
            return self.stack.servers["oncall"]
        port = self._port(ONCALL_PORT)
        return self._step(
            "on-call webhook",
            lambda: self.stack.run_process(
                "oncall",
                [
                    self.options.python,
                    "-m",
                    "meshwatch.demo.oncall",
                    "--port",
                    str(port),
                    "--runbooks",
                    str(self.options.runbooks),
                ],
                ready_url=f"http://127.0.0.1:{port}/healthz",
                urls={"http": f"http://127.0.0.1:{port}"},
                ports={"http": port},
                timeout=60,
            ),
        )

    def alert_rules(self) -> list[Path]:
        """The project's rules (alerts/slos.yaml and the generator's defaults) with runbook links that work.

        Built with ``runbook_base_url`` = the on-call service's ``/runbooks/``, which serves
        docs/runbooks, so every alert the demo raises links to a page that opens (the committed
        rules keep the repository-relative docs/runbooks/X.md).
        """
        from meshwatch.alerts import Params, rule_files

        folder = self.stack.state_dir / "alert-rules"
        for old in folder.glob("*.yml"):
            old.unlink()
        params = Params(runbook_base_url=f"{self.server('oncall').url}/runbooks/")
        return rule_files(folder, self.options.slo_spec, params)

    def configure_alerting(self) -> None:
        """Alertmanager gets the project's routing with the on-call URL of this run; Prometheus the rules.

        Also what puts them back after a test loaded rules or routing of its own.
        """
        oncall = self.server("oncall")
        template = (self.options.repo / "alerts" / "alertmanager.yml").read_text()
        config = template.replace(f"http://127.0.0.1:{ONCALL_PORT}", oncall.url)
        self.server("alertmanager").set_alertmanager_config(config)
        self.server("prometheus").set_rule_files(self.alert_rules())

    def service_env(self, name: str, ports: dict[str, int]) -> dict[str, str]:
        collector = self.server("collector")
        env = {
            "OTEL_SERVICE_NAME": name,
            "MESHWATCH_ENVIRONMENT": "demo",
            "MESHWATCH_SERVICE_VERSION": "0.1.0",
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.urls["otlp_grpc"],
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRIC_EXPORT_INTERVAL": str(self.options.metric_interval_ms),
            "OTEL_PYTHON_EXCLUDED_URLS": "healthz,admin/faults",
            "DEMO_REDIS_URL": self.server("redis").urls["redis"],
            "DEMO_NATS_URL": self.server("nats").urls["nats"],
            "DEMO_DATABASE_URL": os.environ.get(
                "DEMO_DATABASE_URL", f"sqlite:///{self.stack.state_dir / name / f'demo-{name}.db'}"
            ),
        }
        if name in PROPAGATORS:
            env["OTEL_PROPAGATORS"] = PROPAGATORS[name]
        env.update({env_name(peer): f"http://127.0.0.1:{port}" for peer, port in ports.items()})
        # On loopback every peer is 127.0.0.1: name them, so calls read "gateway → orders"
        env["OTEL_INSTRUMENTATION_COMMON_PEER_SERVICE_MAPPING"] = ",".join(
            f"127.0.0.1:{port}={peer}" for peer, port in ports.items()
        )
        return env

    def start_services(self) -> None:
        ports: dict[str, int] = {}
        for name in DEMO_SERVICES:
            if name in self.stack.servers:
                ports[name] = self.stack.servers[name].ports["http"]
                continue
            ports[name] = self._port(DEFAULT_PORTS[name])
            serve = [self.options.python, "-m", "meshwatch.demo.serve", name, "--port", str(ports[name])]
            # fraud is the "legacy" service: no code change, run under meshwatch-run.
            argv = [self._bin("meshwatch-run"), *serve] if name == "fraud" else serve
            self._step(
                f"service {name}",
                lambda name=name, argv=argv: self.stack.run_process(
                    name,
                    argv,
                    ready_url=f"http://127.0.0.1:{ports[name]}/healthz",
                    urls={"http": f"http://127.0.0.1:{ports[name]}"},
                    ports={"http": ports[name]},
                    env=self.service_env(name, ports),
                    timeout=90,
                ),
            )

    def start_load(self) -> Server | None:
        if "loadgen" in self.stack.servers or self.options.rate <= 0:
            return self.stack.servers.get("loadgen")
        port = self._port(LOADGEN_PORT)
        argv = [
            self.options.python,
            "-m",
            "meshwatch.demo.loadgen",
            "--gateway",
            self.server("gateway").url,
            "--rate",
            str(self.options.rate),
            "--duration",
            str(self.options.load_duration),
            "--stats-port",
            str(port),
        ]
        return self._step(
            f"load generator ({self.options.rate:g} req/s)",
            lambda: self.stack.run_process(
                "loadgen",
                argv,
                ready_url=f"http://127.0.0.1:{port}/healthz",
                urls={"http": f"http://127.0.0.1:{port}/stats"},
                ports={"http": port},
                timeout=60,
            ),
        )

    def stop_processes(self) -> list[str]:
        """Stop what the platform started itself (not the backends, which may be shared)."""
        stopped = []
        for name in reversed(PROCESSES):
            if name in self.stack.servers:
                self.stack.stop(name)
                stopped.append(name)
        if "prometheus" in self.stack.servers:
            prometheus = self.stack.servers["prometheus"]
            prometheus.remove_scrape_target("demo-collector-self")
            prometheus.remove_scrape_target("demo-collector-exporter")
        return stopped

    # --- readiness of the data --------------------------------------------------------

    def wait_for_data(self, timeout: float = 180.0) -> None:
        """Wait until each signal is queryable where users look for it."""
        checks: list[tuple[str, Callable[[], str | None]]] = [
            ("traces in Jaeger", self._traces_flowing),
            ("metrics in Prometheus", self._metrics_flowing),
            ("logs in Elasticsearch", self._logs_flowing),
        ]
        for what, check in checks:
            began = time.monotonic()
            self._say(f"waiting for {what}…")
            last: str | None = None
            while True:
                try:
                    last = check()
                except Exception as exc:  # not ready yet: keep asking
                    last = f"not yet ({exc})"
                    ok = False
                else:
                    ok = last is not None and not last.startswith("not yet")
                if ok:
                    self._say(f"  {what}: {last} ({time.monotonic() - began:.0f}s)")
                    break
                if time.monotonic() - began > timeout:
                    raise StackError(f"no {what} after {timeout:.0f}s ({last}); see the logs: meshwatch-demo status")
                time.sleep(2)

    def _traces_flowing(self) -> str | None:
        services = set(http_json(f"{self.server('jaeger').url}/api/services")["data"] or [])
        missing = sorted(set(DEMO_SERVICES) - services)
        return f"not yet: missing {', '.join(missing)}" if missing else f"{len(DEMO_SERVICES)} services"

    def _label_values(self, query: str, label: str) -> set[str]:
        url = f"{self.server('prometheus').url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        return {r["metric"].get(label, "") for r in http_json(url)["data"]["result"]}

    def _metrics_flowing(self) -> str | None:
        """Every service's metrics, as the dashboards draw them: HTTP RED, and span metrics for all six."""
        red = self._label_values("count by (job) (http_server_request_duration_seconds_count)", "job")
        spans = self._label_values("count by (service_name) (traces_span_metrics_calls_total)", "service_name")
        missing = services_without_metrics(red, spans)
        if missing:
            return f"not yet: missing {', '.join(missing)}"
        return f"RED metrics for {len(HTTP_SERVICES)} HTTP services, span metrics for all {len(DEMO_SERVICES)}"

    def _logs_flowing(self) -> str | None:
        url = f"{self.server('elasticsearch').url}/meshwatch-logs-*/_count"
        count = http_json(url)["count"]
        return f"{count} log records" if count else "not yet: no log records"

    # --- what to show -------------------------------------------------------------------

    def urls(self) -> dict[str, str]:
        # The console first: the page to open. The backends below it are APIs (no web UI is built
        # here), each shown with one request that answers.
        shown = {
            "Console (dashboards, metrics, traces, logs, alerts)": self.server("console").url,
            "Prometheus API (no web UI), e.g.": f"{self.server('prometheus').url}/api/v1/query?query=up",
            "Jaeger query API (no web UI), e.g.": f"{self.server('jaeger').url}/api/services",
            "Alertmanager API (no web UI), e.g.": f"{self.server('alertmanager').url}/api/v2/alerts",
            "Elasticsearch (logs)": f"{self.server('elasticsearch').url}/meshwatch-logs-*/_search?q=log.level:error",
            "Gateway (the shop)": f"{self.server('gateway').url}/api/products",
            "On-call webhook page": self.server("oncall").url,
            "Runbooks (each alert's runbook_url)": f"{self.server('oncall').url}/runbooks/",
            "Collector self-metrics": self.server("collector").urls.get("metrics", ""),
        }
        if "loadgen" in self.stack.servers:
            shown["Load generator stats"] = self.server("loadgen").urls["http"]
        return shown
