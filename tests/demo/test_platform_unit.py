"""The demo platform's rules without the demo: when "ready" is ready, and what ``down`` shows."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from meshwatch.demo import cli
from meshwatch.demo.platform import DEMO_SERVICES, HTTP_SERVICES, PROCESSES, services_without_metrics
from meshwatch.stack import Stack, free_port


def test_ready_means_every_service_has_metrics() -> None:
    """One service short of RED or span metrics is not ready (it said "1 services" and went on)."""
    assert services_without_metrics(set(HTTP_SERVICES), set(DEMO_SERVICES)) == []
    assert services_without_metrics({"gateway"}, set(DEMO_SERVICES)) == sorted(set(HTTP_SERVICES) - {"gateway"})
    assert services_without_metrics(set(HTTP_SERVICES), set(DEMO_SERVICES) - {"notifications"}) == ["notifications"]
    assert "console" in PROCESSES  # so the platform's stop stops it; make demo-down stops all the stack runs


def test_down_says_what_it_stops_one_by_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = Stack(tmp_path)
    ports = {name: free_port() for name in ("console", "oncall")}
    for name, port in ports.items():
        stack.run_process(
            name,
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            ready_url=f"http://127.0.0.1:{port}/",
            timeout=30,
        )
    assert cli.main(["--state-dir", str(tmp_path), "down"]) == 0
    out = capsys.readouterr().out
    assert "meshwatch-demo: stopping oncall…\nmeshwatch-demo: stopping console…\n" in out, out
    assert "stopped in " in out and out.rstrip().endswith("oncall, console"), out
    for port in ports.values():
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    assert cli.main(["--state-dir", str(tmp_path), "down"]) == 0
    assert "nothing was running" in capsys.readouterr().out
