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


def test_the_memory_check_parses_status_and_catches_a_demo_over_its_budget() -> None:
    """Positive control of test_e2e's memory assertion: a planted 2 GiB Elasticsearch puts the demo over."""
    from .test_e2e import DEMO_SERVERS, MEMORY_BUDGET_GIB, _demo_gib, _status_memory

    def status(mib: dict[str, int]) -> str:
        lines = [
            f"{name:14} pid {4000 + i:<7} {m:6.0f} MiB  http://127.0.0.1:{9000 + i}"
            for i, (name, m) in enumerate(mib.items())
        ]
        return "\n".join([*lines, f"memory (RSS) of all of it: {sum(mib.values()) / 1024:.2f} GiB", ""])

    usual = dict.fromkeys(DEMO_SERVERS, 100)
    per_server, total = _status_memory(status({**usual, "kafka": 900}))
    assert per_server == {**usual, "kafka": 900} and total == round((len(usual) * 100 + 900) / 1024, 2)
    assert _demo_gib(per_server) == len(usual) * 100 / 1024 < MEMORY_BUDGET_GIB  # Kafka is not the demo's
    over, _ = _status_memory(status({**usual, "elasticsearch": 2048}))
    assert _demo_gib(over) > MEMORY_BUDGET_GIB
