"""The meshwatch-collector command: help, a port in use, exit codes a person can act on."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import yaml


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshwatch.collector", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_the_commands_and_exit_codes() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "validate" in result.stdout and "Exit codes" in result.stdout


def test_a_port_in_use_fails_fast_with_exit_1_and_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = {
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{port}"}}}},
            "exporters": {"debug": {}},
            "service": {
                "storage": {"directory": str(tmp_path / "data")},
                "telemetry": {"metrics": {"address": "127.0.0.1:0"}},
                "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["debug"]}},
            },
        }
        path = tmp_path / "collector.yaml"
        path.write_text(yaml.safe_dump(config))
        result = _run("--config", str(path))
    assert result.returncode == 1
    assert f"cannot listen for OTLP/gRPC on 127.0.0.1:{port}" in result.stderr
