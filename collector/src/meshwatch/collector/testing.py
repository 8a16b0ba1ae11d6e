"""Run a real ``meshwatch-collector`` process in tests, demos and benchmarks.

``start_collector(config, workdir)`` writes the config (a dict, as it would be in
YAML), gives every ``otlp`` receiver and the self-telemetry endpoint free loopback
ports, starts ``python -m meshwatch.collector --config ...`` in its own process
group, waits for ``/healthz`` and returns a ``RunningCollector`` that knows its
endpoints, reads its metrics, and can be stopped, killed (SIGKILL) and restarted on
the same ports and storage.

The pytest fixture ``collector_factory`` (import it into a conftest) starts any
number of them and stops them all at the end of the test::

    def test_x(collector_factory, jaeger):
        collector = collector_factory({"exporters": {...}, "service": {"pipelines": {...}}})
        send_spans_to(collector.grpc_endpoint)
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from meshwatch.stack.ports import free_port as stack_free_port

__all__ = ["RunningCollector", "start_collector", "collector_factory", "free_port", "scrape"]


def free_port() -> int:
    """A loopback port a server can listen on, outside the ephemeral range (see ``meshwatch.stack.ports``)."""
    return stack_free_port()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from a Prometheus text endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class RunningCollector:
    """A collector process started by ``start_collector``."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        env: dict[str, str] | None = None,
        *,
        open_files: int | None = None,
    ) -> None:
        self.config = config
        self.workdir = workdir
        #: One process unless the test asks for workers (``env={"MESHWATCH_COLLECTOR_WORKERS": "2"}``):
        #: the default, one per core, would make every test's collector a supervisor.
        self.env = {"MESHWATCH_COLLECTOR_WORKERS": "1", **(env or {})}
        #: The process's open-file limit (RLIMIT_NOFILE, soft and hard), if not inherited.
        self.open_files = open_files
        self.config_path = workdir / "collector.yaml"
        self.log_path = workdir / "collector.log"
        self.process: subprocess.Popen[bytes] | None = None
        metrics = self._resolve(config["service"]["telemetry"]["metrics"]["address"])
        self.metrics_url = f"http://{metrics}/metrics"
        self.health_url = f"http://{metrics}/healthz"
        self.storage_dir = Path(self._resolve(config["service"]["storage"]["directory"]))
        self.grpc_endpoints: dict[str, str] = {}
        self.http_urls: dict[str, str] = {}
        for rid, rcfg in (config.get("receivers") or {}).items():
            protocols = (rcfg or {}).get("protocols") or {}
            if protocols.get("grpc"):
                self.grpc_endpoints[rid] = self._resolve(protocols["grpc"]["endpoint"])
            if protocols.get("http"):
                scheme = "https" if protocols["http"].get("tls") else "http"
                self.http_urls[rid] = f"{scheme}://{self._resolve(protocols['http']['endpoint'])}"

    def _resolve(self, value: str) -> str:
        """``${VAR:-default}`` / ``${env:VAR}`` as the collector will substitute them with this env."""
        env = {**os.environ, **self.env}

        def repl(match: re.Match[str]) -> str:
            return env.get(match.group(1), match.group(2) or "")

        return re.sub(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}", repl, str(value))

    # --- where it listens -------------------------------------------------------------------

    @property
    def grpc_endpoint(self) -> str:
        """``127.0.0.1:PORT`` of the first otlp receiver's gRPC server."""
        return next(iter(self.grpc_endpoints.values()))

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the first otlp receiver's HTTP server (``https://`` with ``tls``)."""
        return next(iter(self.http_urls.values()))

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> RunningCollector:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "meshwatch.collector", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            cwd=self.workdir,
            start_new_session=True,
            preexec_fn=self._limit_open_files if self.open_files else None,  # noqa: PLW1509 - setrlimit only
        )
        log.close()
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"meshwatch-collector exited with {self.process.returncode} while starting; log:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status == 200:
                        return self
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"meshwatch-collector not healthy after {timeout:.0f}s ({last}); log:\n{self.log_tail()}")

    def _limit_open_files(self) -> None:
        """In the child, before exec: the open-file limit the test asked for."""
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: drains), then SIGKILL after ``timeout``; returns the exit code."""
        if not self.alive():
            return self.process.returncode if self.process else None
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, nothing flushed."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def restart(self, timeout: float = 60.0) -> RunningCollector:
        """Start again on the same ports and storage (after ``stop`` or ``kill``)."""
        if self.alive():
            self.stop()
        return self.start(timeout)

    # --- what it says about itself ---------------------------------------------------------

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return scrape(self.metrics_url)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels`` (0 if none)."""
        total = 0.0
        for (sample, sample_labels), value in self.metrics().items():
            if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items()):
                total += value
        return total

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(self.health_url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _with_ports(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    config = copy.deepcopy(config)
    receivers = config.setdefault("receivers", {"otlp": {}})
    for rid in list(receivers):
        if rid.partition("/")[0] != "otlp":
            continue
        rcfg = receivers[rid] = receivers[rid] or {}
        protocols = rcfg.setdefault("protocols", {"grpc": {}, "http": {}})
        for name in ("grpc", "http"):
            if name in protocols:
                proto = protocols[name] = protocols[name] or {}
                proto.setdefault("endpoint", f"127.0.0.1:{free_port()}")
    service = config.setdefault("service", {})
    telemetry = service.setdefault("telemetry", {})
    telemetry.setdefault("metrics", {}).setdefault("address", f"127.0.0.1:{free_port()}")
    service.setdefault("storage", {}).setdefault("directory", str(workdir / "storage"))
    return config


def start_collector(
    config: dict[str, Any],
    workdir: Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    open_files: int | None = None,
) -> RunningCollector:
    """Start a collector with ``config`` (receivers default to one ``otlp`` on free ports);
    ``open_files`` sets its RLIMIT_NOFILE (for file-descriptor exhaustion tests)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        collector = RunningCollector(_with_ports(config, workdir), workdir, env, open_files=open_files)
        try:
            return collector.start(timeout)
        except RuntimeError as exc:
            if attempt == 2 or not _lost_a_chosen_port(exc, collector.config, config):
                raise
    raise AssertionError("unreachable")


def _lost_a_chosen_port(exc: RuntimeError, started: dict[str, Any], given: dict[str, Any]) -> bool:
    """Whether the collector failed to listen on a port ``_with_ports`` chose (not one the test
    named), which another process took meanwhile: then new ports are worth one more try."""
    busy = re.findall(r"(\d+\.\d+\.\d+\.\d+:\d+): Address already in use", str(exc))
    named = yaml.safe_dump(given)
    return any(address in yaml.safe_dump(started) and address not in named for address in busy)


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixture
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def collector_factory(tmp_path: Path) -> Iterator[Any]:
        """Start collectors with ``collector_factory(config, **kw)``; all are stopped after the test."""
        started: list[RunningCollector] = []

        def factory(config: dict[str, Any], *, name: str = "", **kwargs: Any) -> RunningCollector:
            workdir = tmp_path / (name or f"collector-{len(started)}")
            collector = start_collector(config, workdir, **kwargs)
            started.append(collector)
            return collector

        yield factory
        for collector in started:
            collector.stop(timeout=20)
