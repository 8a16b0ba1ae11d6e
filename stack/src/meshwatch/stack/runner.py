"""Start any subset of the backends on loopback ports, wait until ready, stop by PID.

Every server runs in its own session (process group), so stopping it stops the
helper processes it spawned too (Elasticsearch's launcher and its server JVM).
The state of a running stack is a JSON file, so ``meshwatch-stack down`` in
another shell stops what ``meshwatch-stack up`` started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._kafka_probe import kafka_metadata
from ._paths import default_state_dir
from .backends import SPECS, Launch, jaeger_storage, prometheus_config
from .ports import free_port

__all__ = ["Server", "Stack", "StackError", "free_port", "wait_http"]

#: Start order: Elasticsearch before Jaeger (Jaeger stores its traces there), Alertmanager before
#: Prometheus so Prometheus can be pointed at it.
ORDER = ("elasticsearch", "jaeger", "alertmanager", "prometheus", "redis", "nats", "kafka")
#: What `meshwatch-stack up` starts when no server is named: the four observability backends.
DEFAULT_SERVERS = ("elasticsearch", "jaeger", "alertmanager", "prometheus")


class StackError(RuntimeError):
    """A server did not start or answer; the message names it and says how to fix it."""


def wait_http(url: str, *, timeout: float, is_alive: Any = None, what: str = "") -> None:
    """Poll ``url`` until it answers 2xx (for ``tcp://host:port``: accepts a connection; for
    ``kafka://host:port``: answers a Metadata request listing a broker).

    Fails early if ``is_alive()`` turns false, so a server that crashed at start is
    reported at once with its log rather than after the whole timeout.
    """
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if is_alive is not None and not is_alive():
            raise StackError(f"{what or url}: the process exited while starting")
        if url.startswith("kafka://"):
            host, _, port = url.removeprefix("kafka://").rpartition(":")
            try:
                if kafka_metadata(host, int(port)).brokers:
                    return
                last_error = "Metadata lists no broker yet"
            except (OSError, ValueError) as exc:
                last_error = str(exc) or type(exc).__name__
            time.sleep(0.2)
            continue
        if url.startswith("tcp://"):
            host, _, port = url.removeprefix("tcp://").rpartition(":")
            try:
                with socket.create_connection((host, int(port)), timeout=2):
                    return
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.2)
            continue
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
                last_error = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            last_error = str(getattr(exc, "reason", exc))
        time.sleep(0.2)
    raise StackError(f"{what or url} not ready after {timeout:.0f}s (last: {last_error})")


@dataclass
class Server:
    """A running backend: where it listens and how to stop it."""

    name: str
    pid: int
    ports: dict[str, int]
    urls: dict[str, str]
    workdir: str
    log: str
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The main URL: HTTP API (query API for Jaeger), else the first one."""
        return self.urls.get("http") or self.urls.get("query") or next(iter(self.urls.values()), "")

    def alive(self) -> bool:
        """True while any process of the server's group runs."""
        # Reap the leader if it is our exited child, or it lingers as a zombie.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout``."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.1)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            while self.alive():
                time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        path = Path(self.log)
        if not path.exists():
            return "(no log yet)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- Prometheus helpers ---------------------------------------------------------

    def add_scrape_target(
        self, name: str, address: str, labels: dict[str, str] | None = None, *, honor_labels: bool = False
    ) -> None:
        """Have Prometheus scrape ``address`` (host:port); picked up without a reload.

        ``honor_labels`` is for exporters that carry other jobs' series (the
        collector's Prometheus exporter): their ``job``/``instance`` labels win.
        """
        self._require("prometheus")
        target = [{"targets": [address], "labels": labels or {}}]
        folder = Path(self.workdir) / "targets" / ("honor_labels" if honor_labels else "")
        path = folder / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(target))
        tmp.rename(path)  # atomic, so Prometheus never reads half a file

    def remove_scrape_target(self, name: str) -> None:
        self._require("prometheus")
        for folder in ("", "honor_labels"):
            (Path(self.workdir) / "targets" / folder / f"{name}.json").unlink(missing_ok=True)

    def set_rule_files(self, files: Iterable[Path]) -> None:
        """Replace Prometheus' rule files and reload it."""
        self._require("prometheus")
        rules = Path(self.workdir) / "rules"
        for old in rules.iterdir():
            old.unlink()
        for file in files:
            shutil.copy(file, rules / Path(file).name)
        self.reload()

    def reload(self) -> None:
        """Ask Prometheus or Alertmanager to re-read its config (fails loudly if it is invalid)."""
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            urllib.request.urlopen(request, timeout=10).read()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise StackError(f"{self.name} rejected its new config: {body}") from exc

    # --- Alertmanager helpers -------------------------------------------------------

    def set_alertmanager_config(self, config: str | dict[str, Any]) -> None:
        self._require("alertmanager")
        path = Path(self.workdir) / "alertmanager.yml"
        path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
        self.reload()

    def _require(self, name: str) -> None:
        if self.name != name:
            raise TypeError(f"{self.name} is not {name}")


class Stack:
    """A set of backend servers under one state folder."""

    def __init__(self, state_dir: Path | None = None, *, fixed_ports: bool = False) -> None:
        self.state_dir = Path(state_dir or default_state_dir())
        self.fixed_ports = fixed_ports
        self.servers: dict[str, Server] = {}
        #: The options each server was started with in this process, so ``restart`` repeats them.
        self._options: dict[str, dict[str, Any]] = {}
        self._load_state()

    # --- state ----------------------------------------------------------------------

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    def _load_state(self) -> None:
        if not self._state_file.exists():
            return
        try:
            raw = json.loads(self._state_file.read_text())
        except json.JSONDecodeError:
            return
        for name, data in raw.items():
            server = Server(**data)
            if server.alive():
                self.servers[name] = server

    def _save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps({n: asdict(s) for n, s in self.servers.items()}, indent=2))

    # --- lifecycle ------------------------------------------------------------------

    def start(self, name: str, *, ports: dict[str, int] | None = None, **options: Any) -> Server:
        """Start one backend (or return it if this stack already runs it).

        ``ports`` pins its ports (``restart`` keeps them, so clients pointed at it keep working);
        otherwise they are the usual ones (``fixed_ports``) or free ones.
        """
        if name not in SPECS:
            raise StackError(f"unknown server {name!r}; choose from {', '.join(SPECS)}")
        if name in self.servers and self.servers[name].alive():
            return self.servers[name]
        spec = SPECS[name]
        if name == "prometheus" and "alertmanager" in self.servers and "alertmanager" not in options:
            options["alertmanager"] = f"127.0.0.1:{self.servers['alertmanager'].ports['http']}"
        if name == "jaeger":
            options = self._jaeger_options(options)
        self._options[name] = dict(options)
        workdir = self.state_dir / name
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        workdir.chmod(0o755)
        self.state_dir.chmod(0o755)
        if ports is None:
            ports = {}
            for port_name in spec.ports:
                preferred = spec.default_ports.get(port_name) if self.fixed_ports else None
                port = free_port(preferred)
                while port in ports.values():
                    port = free_port()
                ports[port_name] = port
        launch = spec.prepare(workdir, ports, options)
        server = self._spawn(name, launch, workdir, ports)
        self.servers[name] = server
        self._save_state()
        try:
            wait_http(launch.ready_url, timeout=launch.ready_timeout, is_alive=server.alive, what=name)
        except StackError as exc:
            tail = server.log_tail()
            server.stop(timeout=5)
            self.servers.pop(name, None)
            self._save_state()
            raise StackError(f"{exc}.\n  Fix: {launch.hint}\n  Log {server.log} ends with:\n{tail}") from None
        return server

    def _jaeger_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Jaeger's storage made explicit; on Elasticsearch, this stack's unless a URL is given."""
        try:
            storage = jaeger_storage(options)
        except ValueError as exc:
            raise StackError(str(exc)) from None
        options = {**options, "storage": storage}
        if storage == "elasticsearch" and not options.get("elasticsearch_url"):
            es = self.servers.get("elasticsearch")
            if es is None or not es.alive():
                raise StackError(
                    "jaeger stores its traces in Elasticsearch, which this stack does not run.\n"
                    "  Fix: start elasticsearch first (`meshwatch-stack up elasticsearch jaeger`), pass "
                    "elasticsearch_url=…, or keep traces in memory (storage='memory', "
                    "`--jaeger-storage memory`, MESHWATCH_JAEGER_STORAGE=memory)"
                )
            options["elasticsearch_url"] = es.url
        return options

    def restart(self, name: str) -> Server:
        """Stop a backend and start it again on the same ports with the same options.

        What survives is what its storage keeps: Jaeger on Elasticsearch keeps its traces,
        Jaeger in memory loses them. Only for servers this ``Stack`` object started.
        """
        server = self.servers.get(name)
        if server is None or name not in self._options:
            raise StackError(f"{name} was not started by this stack; nothing to restart")
        self.stop(name)
        return self.start(name, ports=dict(server.ports), **self._options[name])

    def _spawn(self, name: str, launch: Launch, workdir: Path, ports: dict[str, int]) -> Server:
        argv = list(launch.argv)
        if launch.run_as:
            setpriv = shutil.which("setpriv")
            if setpriv:
                argv = [setpriv, f"--reuid={launch.run_as}", f"--regid={launch.run_as}", "--init-groups", "--", *argv]
            else:
                argv = ["runuser", "-u", launch.run_as, "--", *argv]
        log_path = workdir / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **launch.env},
                cwd=workdir,
                start_new_session=True,  # its own process group: stop kills the whole tree
            )
        return Server(name, proc.pid, ports, launch.urls, str(workdir), str(log_path), argv)

    def run_process(
        self,
        name: str,
        argv: list[str],
        *,
        ready_url: str,
        urls: dict[str, str] | None = None,
        ports: dict[str, int] | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
        hint: str = "",
    ) -> Server:
        """Run any program (the collector, a demo service) under the same management as the backends.

        It gets a folder and a log file under the state folder, is recorded in the
        state file (so ``meshwatch-stack down`` stops it too), and is waited for.
        """
        if name in self.servers and self.servers[name].alive():
            raise StackError(f"{name} is already running (pid {self.servers[name].pid})")
        workdir = self.state_dir / name
        workdir.mkdir(parents=True, exist_ok=True)
        launch = Launch(
            argv=argv, ready_url=ready_url, urls=urls or {}, env=env or {}, ready_timeout=timeout, hint=hint
        )
        server = self._spawn(name, launch, workdir, ports or {})
        self.servers[name] = server
        self._save_state()
        try:
            wait_http(ready_url, timeout=timeout, is_alive=server.alive, what=name)
        except StackError as exc:
            tail = server.log_tail()
            server.stop(timeout=5)
            self.servers.pop(name, None)
            self._save_state()
            raise StackError(f"{exc}.\n  Fix: {hint or 'see its log'}\n  Log {server.log} ends with:\n{tail}") from None
        return server

    def up(self, names: Iterable[str], **options_by_server: dict[str, Any]) -> dict[str, Server]:
        """Start several servers in dependency order."""
        wanted = set(names)
        for name in ORDER:
            if name in wanted:
                self.start(name, **options_by_server.get(name, {}))
        return {n: self.servers[n] for n in ORDER if n in self.servers}

    def stop(self, name: str) -> None:
        server = self.servers.pop(name, None)
        if server:
            server.stop()
            self._save_state()

    def down(self, progress: Callable[[str], None] | None = None) -> list[str]:
        """Stop everything: programs started with ``run_process`` (newest first), then the backends.

        ``progress`` hears each name before it is stopped (Elasticsearch takes seconds to go).
        """
        stopped = []
        programs = reversed([n for n in self.servers if n not in ORDER])
        names = [*programs, *(n for n in reversed(ORDER) if n in self.servers)]
        for name in names:
            if progress:
                progress(name)
            self.stop(name)
            stopped.append(name)
        return stopped


def render_prometheus_config(options: dict[str, Any], alertmanager: str | None = None) -> str:
    """The Prometheus config the runner writes (exposed for docs and the compose file)."""
    return json.dumps(prometheus_config(options, alertmanager), indent=2)
