"""A deploy's SIGTERM (and a terminal's Ctrl-C) loses nothing that finished before it.

Each server runs under ``meshwatch-run`` with the default batch delay (5 s), so
when the signal comes 0.3 s after the last request, every span and log record is
still in meshwatch's queues: only a flush on the way out gets them to the sink.
The server must also still stop the way it always did (same exit status).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from meshwatch.collector.otlp_sink import OtlpSink, otlp_sink, sink_env
from meshwatch.stack import free_port
from meshwatch.stack.testing import eventually

from ._helpers import base_env, start

pytestmark = pytest.mark.integration

REQUESTS = 30


def _serve_then_signal(
    sink: OtlpSink, tmp_path: Path, name: str, argv: list[str], *, port: int, path: str, sig: int
) -> tuple[int, str]:
    env = base_env(**sink_env(sink, OTEL_SERVICE_NAME=f"stop-{name}", MESHWATCH_SHUTDOWN_TIMEOUT="5"))
    service = start(name, argv, env, tmp_path, port=port, ready_path=f"{path}0")
    # the readiness probe made one request too: count only ours, by item number
    for item in range(1, REQUESTS + 1):
        with urllib.request.urlopen(f"{service.url}{path}{item}", timeout=10) as response:
            assert response.status == 200
    time.sleep(0.3)
    os.kill(service.process.pid, sig)  # to the server process alone, as `kill` or an orchestrator does
    try:
        code = service.process.wait(30)
    except subprocess.TimeoutExpired:
        service.stop(1)
        tail = service.log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"{name} did not stop within 30 s of the signal:\n{tail}") from None
    return code, service.log.read_text(errors="replace")


def _items(sink: OtlpSink, key: str = "item") -> tuple[set[int], set[int]]:
    with sink.lock:
        spans = {int(s.attributes["url.path"].rsplit("/", 1)[1]) for s in sink.spans if "url.path" in s.attributes}
        logs = {int(r.attributes[key]) for r in sink.logs if key in r.attributes}
    return spans, logs


CASES = {
    "uvicorn": (["uvicorn", "pricing:app", "--port", "{port}"], "/price/"),
    "gunicorn": (["gunicorn", "-w", "2", "-b", "127.0.0.1:{port}", "inventory:app"], "/stock/"),
    "hypercorn": (["hypercorn", "-b", "127.0.0.1:{port}", "pricing:app"], "/price/"),
}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("server", sorted(CASES))
def test_every_finished_span_and_log_arrives_after_the_stop_signal(server: str, sig: int, tmp_path: Path) -> None:
    argv, path = CASES[server]
    port = free_port()
    with otlp_sink() as sink:
        code, log = _serve_then_signal(
            sink,
            tmp_path,
            server,
            ["meshwatch-run", *(a.format(port=port) for a in argv)],
            port=port,
            path=path,
            sig=sig,
        )
        wanted = set(range(1, REQUESTS + 1))

        def arrived() -> bool:
            spans, logs = _items(sink)
            return wanted <= spans and wanted <= logs

        eventually(arrived, timeout=5, what=f"all {REQUESTS} spans and log records of {server} after {sig.name}")
        spans, logs = _items(sink)
        assert spans >= wanted and logs >= wanted, (sorted(wanted - spans), sorted(wanted - logs), log[-2000:])
    # the server still stops the way it does without meshwatch
    assert code in (0, -sig, 128 + sig), f"{server} exited with {code} after {sig.name}:\n{log[-2000:]}"


_SCRIPT = """
import logging, sys, time
from opentelemetry import trace
tracer = trace.get_tracer("job")
for i in range(1, 31):
    with tracer.start_as_current_span("step", attributes={"item": i}):
        logging.getLogger("job").warning("step done", extra={"item": i})
print("ready", flush=True)
time.sleep(60)
"""


def _script(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    process = subprocess.Popen(
        ["meshwatch-run", "python", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("ready"):
            break
    return process


def test_a_plain_script_killed_by_sigterm_still_exports_and_dies_of_it(tmp_path: Path) -> None:
    """No server in between: the default SIGTERM disposition is the one that skipped atexit."""
    with otlp_sink() as sink:
        process = _script(tmp_path, base_env(**sink_env(sink, OTEL_SERVICE_NAME="stop-script")))
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == -signal.SIGTERM, "the script must still die of SIGTERM"
        with sink.lock:
            spans = {s.attributes.get("item") for s in sink.spans if s.name == "step"}
            logs = {r.attributes.get("item") for r in sink.logs}
        assert spans == set(range(1, 31)), sorted(set(range(1, 31)) - spans)
        assert set(range(1, 31)) <= logs, sorted(set(range(1, 31)) - logs)


def test_sigterm_with_the_collector_unreachable_exits_within_the_bound(tmp_path: Path) -> None:
    env = base_env(
        OTEL_SERVICE_NAME="stop-unreachable",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",  # nobody listens
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        MESHWATCH_SHUTDOWN_TIMEOUT="3",
    )
    process = _script(tmp_path, env)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == -signal.SIGTERM
    took = time.monotonic() - started
    output = process.stdout.read() if process.stdout else ""
    assert took < 3 + 2, f"took {took:.1f}s to exit with shutdown_timeout=3"
    assert "meshwatch dropped telemetry" in output, output[-2000:]
