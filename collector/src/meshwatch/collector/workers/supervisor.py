"""``meshwatch-collector --workers N``: N collector processes behind the configured ports.

One collector process uses one core (the GIL). The supervisor runs N ordinary collectors
(``meshwatch-collector run --workers 1``), each with the same config except where it
listens (private loopback ports) and where it keeps its queues
(``<storage.directory>/worker-<i>``), and stands in front of them:

* the configured OTLP ports are the supervisor's (``front.Front`` relays each connection
  to one worker), so senders see one collector;
* the configured self-telemetry address answers ``/metrics`` for all workers, each sample
  labelled ``worker``, and ``/healthz``, healthy only when every worker is; a ``prometheus``
  exporter's endpoint is merged the same way (``merged.MergedServer``);
* a worker that exits without being asked (SIGKILL, a crash) is started again on the same
  ports and the same queue directory, so what it had acknowledged is delivered after all;
* SIGTERM (or SIGINT) stops accepting, sends SIGTERM to every worker, which drain as a
  single collector does (``service.shutdown_timeout``), and exits when all have.

``--workers auto`` (the default) is one worker per core, except for configs holding
per-trace state (``servicegraph`` pairs client and server spans, ``tail_sampling`` decides
on whole traces): spans of one trace arrive over different connections, so they would land
in different workers; those run as one process unless ``--workers`` says otherwise.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from .. import __version__
from ..component import ComponentId, Kind
from ..config import Config
from .front import Front, Listener
from .merged import MergedServer, scrape_all, worker_health

__all__ = ["STATEFUL_COMPONENTS", "WORKERS_ENV", "Supervisor", "resolve_workers"]

log = logging.getLogger("meshwatch.collector.workers")

#: Where ``--workers`` is read from when the flag is not given (``auto``, or a number).
WORKERS_ENV = "MESHWATCH_COLLECTOR_WORKERS"
#: Set in each worker's environment: its index (its signals are the supervisor's to send).
WORKER_INDEX_ENV = "MESHWATCH_COLLECTOR_WORKER"
#: Components that need every span of a trace in one process: ``auto`` runs them as one worker.
STATEFUL_COMPONENTS = frozenset({(Kind.CONNECTOR, "servicegraph"), (Kind.PROCESSOR, "tail_sampling")})
#: How long a worker may take to answer ``/healthz`` after it was started.
WORKER_START_TIMEOUT = 60.0


def cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(flag: str | None, config: Config) -> tuple[int, str]:
    """How many workers to run, and why (logged at start)."""
    value = (flag or os.environ.get(WORKERS_ENV) or "auto").strip().lower()
    stateful = sorted(str(cid) for kind, cid in config.components if (kind, cid.type) in STATEFUL_COMPONENTS)
    if value == "auto":
        if stateful:
            return 1, f"auto: one process, because {', '.join(stateful)} need every span of a trace in one process"
        return cores(), f"auto: one per core ({cores()})"
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"--workers {value!r}: a number of processes (1 or more) or 'auto'") from None
    if count < 1:
        raise ValueError(f"--workers {count}: at least 1")
    if count > 1 and stateful:
        log.warning(
            "%d workers with %s: spans of one trace may reach different workers, "
            "so service-graph edges and tail-sampling decisions can be incomplete",
            count,
            ", ".join(stateful),
        )
    return count, "asked"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _die_with_parent() -> None:
    """In a worker, before exec: killed when the supervisor dies, so no orphan keeps a queue locked."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Worker:
    index: int
    config_path: Path
    telemetry: str  # private host:port of its /metrics and /healthz
    prometheus: dict[str, str]  # exporter id -> private host:port
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = field(default_factory=time.monotonic)

    def up(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    """Runs the workers, the front and the merged endpoints until SIGTERM."""

    def __init__(self, config: Config, count: int, reason: str = "") -> None:
        self.config = config
        self.count = count
        self.reason = reason
        self.base = config.storage_dir
        self._stop = threading.Event()
        self.stop_reason = ""
        raw = yaml.safe_load(config.path.read_text()) or {}
        self.listeners = self._listeners()
        self.prometheus_public = {
            str(cid): cc.config.endpoint
            for (kind, cid), cc in config.components.items()
            if kind is Kind.EXPORTER and cid.type == "prometheus"
        }
        self.workers = [self._plan(i, raw) for i in range(count)]
        self.front = Front(self.listeners, lambda i: self.workers[i].up())
        self.servers: list[MergedServer] = []

    # --- the plan: what each worker's config says ----------------------------------------

    def _listeners(self) -> list[Listener]:
        listeners = []
        for (kind, cid), cc in self.config.components.items():
            if kind is not Kind.RECEIVER or cid.type != "otlp":
                continue
            protocols = cc.config.protocols  # an otlp receiver's config (OtlpReceiverConfig)
            for proto, settings in (("grpc", protocols.grpc), ("http", protocols.http)):
                if settings is None:
                    continue
                host, port = _split(settings.endpoint)
                ports = [_free_port() for _ in range(self.count)]
                listeners.append(Listener(f"{cid}/{proto}", host, port, ports))
        return listeners

    def _plan(self, index: int, raw: dict[str, Any]) -> Worker:
        data = copy.deepcopy(raw)
        receivers = data.setdefault("receivers", {}) or {}
        for key in list(receivers):
            cid = ComponentId.parse(str(key))
            if cid.type != "otlp":
                continue
            rcfg = receivers[key] = receivers[key] or {}
            protocols = rcfg.get("protocols")
            if protocols is None:
                protocols = rcfg["protocols"] = {"grpc": {}, "http": {}}
            for proto in ("grpc", "http"):
                if proto not in protocols:
                    continue
                listener = next(lst for lst in self.listeners if lst.name == f"{cid}/{proto}")
                settings = protocols[proto] = protocols[proto] or {}
                settings["endpoint"] = f"127.0.0.1:{listener.worker_ports[index]}"
        prometheus = {}
        for key in list(data.get("exporters") or {}):
            cid = ComponentId.parse(str(key))
            if cid.type == "prometheus":
                ecfg = data["exporters"][key] = data["exporters"][key] or {}
                ecfg["endpoint"] = prometheus[str(cid)] = f"127.0.0.1:{_free_port()}"
        service = data.setdefault("service", {})
        telemetry = f"127.0.0.1:{_free_port()}"
        service.setdefault("telemetry", {}).setdefault("metrics", {})["address"] = telemetry
        service.setdefault("storage", {})["directory"] = str(self.base / f"worker-{index}")
        self.base.mkdir(parents=True, exist_ok=True)
        path = self.base / f"worker-{index}.config.yaml"
        # Written from the file as it was, ${VAR} references and all: secrets stay in the environment.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            yaml.safe_dump(data, out, sort_keys=False)
        return Worker(index, path, telemetry, prometheus)

    # --- processes ----------------------------------------------------------------------

    def _spawn(self, worker: Worker) -> None:
        argv = [sys.executable, "-m", "meshwatch.collector", "run", "--config", str(worker.config_path)]
        worker.process = subprocess.Popen(
            [*argv, "--workers", "1"],
            env={**os.environ, WORKER_INDEX_ENV: str(worker.index)},
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl call, no locks
        )
        worker.started_at = time.monotonic()
        log.info("worker %d started (pid %d, queues in %s)", worker.index, worker.process.pid, self._queue(worker))

    def _queue(self, worker: Worker) -> Path:
        return self.base / f"worker-{worker.index}"

    def _wait_healthy(self, worker: Worker) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while time.monotonic() < deadline:
            if not worker.up():
                code = worker.process.returncode if worker.process else None
                raise RuntimeError(f"worker {worker.index} exited with {code} while starting")
            try:
                with urllib.request.urlopen(f"http://{worker.telemetry}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"worker {worker.index} not healthy after {WORKER_START_TIMEOUT:.0f}s")

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.stop_reason = signal.Signals(signum).name
            self._stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        """Start everything, restart workers that die, stop on a signal; the exit code."""
        self.front.bind()
        try:
            for worker in self.workers:
                self._spawn(worker)
            for worker in self.workers:
                self._wait_healthy(worker)
            self._serve()
        except (RuntimeError, OSError) as exc:
            log.error("cannot start the workers: %s", exc)
            self._stop_workers(5.0)
            self.front.close()
            return 1
        self.front.start()
        log.info(
            "meshwatch-collector %s started: %d workers (%s); ports %s; queues in %s/worker-<i>",
            __version__,
            self.count,
            self.reason,
            ", ".join(f"{lst.name} {lst.host}:{lst.port}" for lst in self.listeners),
            self.base,
        )
        while not self._stop.wait(0.2):
            for worker in self.workers:
                if not worker.up() and not self._stop.is_set():
                    self._restart(worker)
        return self.stop()

    def _restart(self, worker: Worker) -> None:
        assert worker.process is not None
        worker.last_exit = worker.process.returncode
        worker.restarts += 1
        # A worker that dies at once again and again is not restarted in a tight loop.
        if time.monotonic() - worker.started_at < 5.0:
            time.sleep(min(5.0, 0.5 * worker.restarts))
        log.warning(
            "worker %d (pid %d) exited with %s; restarting it on its queue %s (restart %d)",
            worker.index,
            worker.process.pid,
            worker.last_exit,
            self._queue(worker),
            worker.restarts,
        )
        self._spawn(worker)

    def stop(self) -> int:
        log.info("stopping (%s): no new connections, then SIGTERM to %d workers", self.stop_reason, self.count)
        self.front.stop_accepting()
        codes = self._stop_workers(self.config.service.shutdown_timeout + 15.0)
        self.front.close()
        for server in self.servers:
            server.stop()
        log.info("stopped; workers exited with %s", codes)
        return 0 if all(code == 0 for code in codes) else 1

    def _stop_workers(self, timeout: float) -> list[int | None]:
        self._stop.set()
        for worker in self.workers:
            if worker.up():
                assert worker.process is not None
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        for worker in self.workers:
            if worker.process is None:
                codes.append(None)
                continue
            try:
                codes.append(worker.process.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                codes.append(worker.process.wait())
        return codes

    # --- one endpoint for all ------------------------------------------------------------

    def _serve(self) -> None:
        address = self.config.service.telemetry.metrics.address
        if address and address.lower() != "none":
            telemetry = {str(w.index): f"http://{w.telemetry}/metrics" for w in self.workers}
            self.servers.append(MergedServer(address, lambda _path: scrape_all(telemetry), self.health, self._own))
        for exporter, public in self.prometheus_public.items():
            bases = {str(w.index): f"http://{w.prometheus[exporter]}" for w in self.workers}
            self.servers.append(
                MergedServer(public, lambda path, b=bases: scrape_all({k: v + path for k, v in b.items()}), None)
            )
        for server in self.servers:
            server.start()

    def health(self) -> tuple[bool, dict[str, Any]]:
        detail: dict[str, Any] = {}
        healthy = not self._stop.is_set()
        for worker in self.workers:
            ok, answer = worker_health(f"http://{worker.telemetry}/healthz") if worker.up() else (False, {})
            healthy = healthy and ok
            detail[str(worker.index)] = {
                **answer,
                "status": "ok" if ok else ("starting" if worker.up() else "down"),
                "pid": worker.process.pid if worker.process else None,
                "restarts": worker.restarts,
                **({"last_exit_code": worker.last_exit} if worker.last_exit is not None else {}),
            }
        return healthy, {"version": __version__, "workers": detail}

    def _own(self) -> Iterable[Metric]:
        count = Metric("meshwatch_collector_workers", "Worker processes the collector runs", "gauge")
        count.samples.append(Sample("meshwatch_collector_workers", {}, float(self.count), None))
        up = Metric("meshwatch_collector_worker_up", "1 while the worker process runs", "gauge")
        restarts = Metric("meshwatch_collector_worker_restarts", "Times the worker was started again", "counter")
        relayed = Metric(
            "meshwatch_collector_front_connections", "Connections the front relayed to a worker", "counter"
        )
        for worker in self.workers:
            labels = {"worker": str(worker.index)}
            up.samples.append(Sample(up.name, labels, 1.0 if worker.up() else 0.0, None))
            restarts.samples.append(Sample(f"{restarts.name}_total", labels, float(worker.restarts), None))
            for listener in self.listeners:
                value = float(listener.relayed[worker.index])
                where = {**labels, "listener": listener.name}
                relayed.samples.append(Sample(f"{relayed.name}_total", where, value, None))
        return [count, up, restarts, relayed]
