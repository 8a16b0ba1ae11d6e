"""promtool and amtool accept the rules and the Alertmanager config, and every rule's unit tests pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from meshwatch.alerts import Params
from meshwatch.alerts.build import render_all, write

from .conftest import ALERTS


def _run(*argv: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300)


def test_promtool_check_rules(promtool: Path) -> None:
    done = _run(promtool, "check", "rules", *sorted((ALERTS / "rules").glob("*.yml")))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == 4


def test_promtool_unit_tests_pass(promtool: Path) -> None:
    files = sorted((ALERTS / "tests").glob("*.test.yml"))
    assert len(files) == 4
    done = _run(promtool, "test", "rules", *files)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(files)


def test_unit_tests_catch_a_wrong_for(promtool: Path, tmp_path: Path) -> None:
    """The unit tests pin the exact minute: rules that fire without waiting must fail them."""
    write(render_all(params=Params(for_override="0s")), tmp_path)
    shutil.copytree(ALERTS / "tests", tmp_path / "tests")
    for name in ("red", "pipeline", "slo"):
        done = _run(promtool, "test", "rules", tmp_path / "tests" / f"{name}.test.yml")
        assert done.returncode != 0, f"{name}.test.yml passed with every `for` removed"
        assert "FAILED" in done.stdout + done.stderr


def test_amtool_check_config(amtool: Path) -> None:
    done = _run(amtool, "check-config", ALERTS / "alertmanager.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _route(amtool: Path, *labels: str) -> str:
    done = _run(amtool, "config", "routes", "test", f"--config.file={ALERTS / 'alertmanager.yml'}", *labels)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_routing(amtool: Path) -> None:
    assert _route(amtool, "alertname=MeshwatchHTTPErrorRateHigh", "severity=critical", "service=checkout") == "oncall"
    assert _route(amtool, "alertname=MeshwatchHTTPErrorRateHigh", "severity=warning", "service=checkout") == "ticket"
    assert _route(amtool, "alertname=Watchdog", "severity=none") == "heartbeat"
    # An alert with an unknown severity still reaches a person.
    assert _route(amtool, "alertname=Something", "severity=info") == "ticket"
