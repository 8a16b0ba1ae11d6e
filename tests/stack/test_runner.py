"""The stack runner: starting, readiness failures, stopping by PID, the cache."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from meshwatch.stack import BackendMissing, Stack, StackError, binary, free_port, install
from meshwatch.stack.backends import Launch
from meshwatch.stack.installer import DEFAULT_COMPONENTS


def test_free_port_prefers_the_usual_port_and_moves_on_when_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        chosen = free_port(busy)
        assert chosen != busy
    free = free_port()
    assert free_port(free) == free


def test_a_missing_backend_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHWATCH_CACHE", str(tmp_path))
    with pytest.raises(BackendMissing, match=r"meshwatch-stack install jaeger") as excinfo:
        binary("jaeger")
    assert "make backends" in str(excinfo.value)


@pytest.mark.integration
def test_second_install_finds_everything_cached() -> None:
    # `make test` installed the backends before this session; installing again is a no-op.
    assert install(list(DEFAULT_COMPONENTS)) == []


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    launch = Launch(argv=["sh", "-c", "sleep 300 & sleep 300 & wait"], ready_url="", urls={"http": ""})
    server = stack._spawn("sleeper", launch, tmp_path, {})
    time.sleep(0.3)
    members = subprocess.run(["pgrep", "-g", str(server.pid)], capture_output=True, text=True).stdout.split()
    assert len(members) == 3  # the shell and its two children
    server.stop(timeout=5)
    assert not server.alive()
    for pid in members:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.integration
def test_a_server_that_cannot_start_reports_why(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    with pytest.raises(StackError) as excinfo:
        stack.start("prometheus", scrape_interval="every-now-and-then")
    message = str(excinfo.value)
    assert "prometheus" in message
    assert "Fix:" in message
    assert "every-now-and-then" in message  # Prometheus' own complaint, from its log
    assert "prometheus" not in stack.servers


@pytest.mark.integration
def test_cli_up_status_down(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "meshwatch.stack"]
    state = tmp_path / "state"
    up = subprocess.run(
        [*cli, "up", "alertmanager", "--random-ports", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert up.returncode == 0, up.stderr
    url = next(word.split("=", 1)[1] for word in up.stdout.split() if word.startswith("http=")).rstrip("/")
    assert httpx.get(f"{url}/-/ready", timeout=5).status_code == 200

    status = subprocess.run([*cli, "status", "--state-dir", str(state)], capture_output=True, text=True, timeout=30)
    assert "alertmanager" in status.stdout and url in status.stdout

    pid = Stack(state).servers["alertmanager"].pid
    down = subprocess.run([*cli, "down", "--state-dir", str(state)], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0 and "stopped: alertmanager" in down.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/-/ready", timeout=2)


@pytest.mark.integration
def test_cli_up_jaeger_in_memory_starts_no_elasticsearch(tmp_path: Path) -> None:
    """`--jaeger-storage memory` is the quick Jaeger; without it `up jaeger` would bring Elasticsearch."""
    cli = [sys.executable, "-m", "meshwatch.stack"]
    state = tmp_path / "state"
    up = subprocess.run(
        [*cli, "up", "jaeger", "--jaeger-storage", "memory", "--random-ports", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert up.returncode == 0, up.stderr
        assert set(Stack(state).servers) == {"jaeger"}
        assert "storage=" not in up.stdout and "starting it too" not in up.stderr + up.stdout
    finally:
        subprocess.run([*cli, "down", "--state-dir", str(state)], capture_output=True, timeout=60)
    bad = subprocess.run(
        [*cli, "up", "jaeger", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MESHWATCH_JAEGER_STORAGE": "cassandra"},
    )
    assert bad.returncode == 2 and "choose from elasticsearch, memory" in bad.stderr


def test_cli_rejects_an_unknown_server_with_usage_exit_code(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshwatch.stack", "up", "grafana", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "unknown server" in result.stderr and "prometheus" in result.stderr


def test_run_process_manages_any_program_and_down_stops_it(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    port = free_port()
    server = stack.run_process(
        "webapp",
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        ready_url=f"http://127.0.0.1:{port}/",
        urls={"http": f"http://127.0.0.1:{port}"},
    )
    assert httpx.get(server.url, timeout=5).status_code == 200
    assert "webapp" in Stack(tmp_path).servers  # recorded for `meshwatch-stack down` in another shell
    assert Stack(tmp_path).down() == ["webapp"]
    assert not server.alive()


def test_run_process_reports_a_crash_at_start_with_its_log(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    with pytest.raises(StackError, match="exited while starting") as excinfo:
        stack.run_process(
            "broken",
            [sys.executable, "-c", "import sys; print('config file missing: /etc/app.yaml'); sys.exit(3)"],
            ready_url=f"http://127.0.0.1:{free_port()}/",
            hint="give it a config file",
        )
    assert "config file missing" in str(excinfo.value)
    assert "give it a config file" in str(excinfo.value)


@pytest.mark.integration
def test_redis_and_nats_start_and_answer(redis_server, nats_server) -> None:
    host, port = redis_server.urls["redis"].removeprefix("redis://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"PING\r\n")
        assert conn.recv(64) == b"+PONG\r\n"
    assert httpx.get(f"{nats_server.urls['monitor']}/healthz", timeout=5).json()["status"] == "ok"
