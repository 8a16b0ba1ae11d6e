"""Running test services under ``meshwatch-run`` (or plain Python) and reading what reached the backends."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshwatch.stack import free_port, wait_http

APPS = Path(__file__).resolve().parent / "apps"
BIN = Path(sys.executable).parent


def base_env(**extra: str) -> dict[str, str]:
    """The test process's environment without OTEL_/MESHWATCH_ settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHWATCH_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Service:
    """A server process (and its workers) started for a test; its stdout goes to ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[dict[str, Any]]:
        """The JSON objects among the lines it printed (other lines are skipped)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM the process group (graceful), SIGKILL after ``timeout``; returns the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


def start(
    name: str,
    argv: list[str],
    env: dict[str, str],
    workdir: Path,
    *,
    port: int,
    ready_path: str = "/",
    cwd: Path = APPS,
) -> Service:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    service = Service(name, process, port, log)
    try:
        wait_http(f"{service.url}{ready_path}", timeout=90, is_alive=service.alive, what=name)
    except Exception as exc:
        service.stop(5)
        raise AssertionError(f"{name} did not start: {exc}\n{log.read_text(errors='replace')[-3000:]}") from None
    return service


def get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def jaeger_trace(jaeger: Any, trace_id: str) -> dict[str, Any] | None:
    """The trace as Jaeger's query API returns it, or None while it is not there."""
    try:
        data = get_json(f"{jaeger.url}/api/traces/{trace_id}")
    except urllib.error.HTTPError:
        return None
    traces = data.get("data") or []
    return traces[0] if traces else None


def span_tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span.get("tags", [])}


def process_tags(trace: dict[str, Any], span: dict[str, Any]) -> dict[str, Any]:
    process = trace["processes"][span["processID"]]
    return {"service.name": process["serviceName"], **{t["key"]: t["value"] for t in process.get("tags", [])}}


def parent_id(span: dict[str, Any]) -> str | None:
    refs = [r for r in span.get("references", []) if r.get("refType") == "CHILD_OF"]
    return refs[0]["spanID"] if refs else None


def prom_query(prometheus: Any, query: str) -> list[dict[str, Any]]:
    url = f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    return get_json(url)["data"]["result"]


def prom_value(prometheus: Any, query: str) -> float:
    result = prom_query(prometheus, query)
    return sum(float(r["value"][1]) for r in result)


@contextlib.contextmanager
def running(*services: Service) -> Iterator[None]:
    try:
        yield
    finally:
        for service in services:
            service.stop()


def closed_port_url() -> str:
    """An http URL where nothing listens (the port was free a moment ago)."""
    return f"http://127.0.0.1:{free_port()}"


def wait(seconds: float) -> None:
    """Only for pacing load, never for correctness (that is ``eventually``)."""
    time.sleep(seconds)
