"""pint (Cloudflare's Prometheus rule linter, v0.87.0) finds nothing in the shipped rules.

Offline here: syntax, templates against the labels each expression keeps, ``for`` and
``keep_firing_for``, comparisons, rule dependencies. The exceptions are in
``alerts/pint.hcl``, each with why. The online checks (every series a rule reads exists,
``rate()`` only on counters) run against the demo's data in ``tests/demo/test_pint_live.py``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from meshwatch.stack import binary
from meshwatch.stack.installer import BackendMissing

from .conftest import ALERTS

# a tool meshwatch-stack installs (a backend binary): not for `make unit`
pytestmark = pytest.mark.integration

CONFIG = ALERTS / "pint.hcl"
PLANTED = """\
groups:
  - name: planted
    rules:
      - alert: PlantedServiceDown
        expr: sum(rate(http_server_request_duration_seconds_count[5m])) < 1
        for: 1m
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.job }} is down"
"""


@pytest.fixture(scope="module")
def pint() -> Path:
    try:
        return binary("pint")
    except BackendMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def lint(pint: Path, *files: Path, config: Path | None = CONFIG) -> subprocess.CompletedProcess[str]:
    command = [str(pint), "--no-color", "--offline"]
    if config is not None:
        command += ["--config", str(config)]
    command += ["lint", "--fail-on", "warning", *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ALERTS)


def test_pint_finds_nothing_in_the_shipped_rules(pint: Path) -> None:
    rules = sorted((ALERTS / "rules").glob("*.yml"))
    assert len(rules) == 4
    done = lint(pint, *rules)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Problems found" not in done.stderr, done.stderr


def test_pint_reports_a_planted_template_bug_and_the_exceptions_are_needed(pint: Path, tmp_path: Path) -> None:
    """Positive controls: a label removed by ``sum`` used in a template; and without the
    config, the two documented findings come back (so each exception is still needed)."""
    planted = tmp_path / "planted.rules.yml"
    planted.write_text(PLANTED)
    done = lint(pint, planted)
    assert done.returncode != 0
    assert "template uses non-existent label (alerts/template)" in done.stdout + done.stderr
    bare = lint(pint, *sorted((ALERTS / "rules").glob("*.yml")), config=None)
    assert bare.returncode != 0
    assert "always firing alert (alerts/comparison)" in bare.stdout + bare.stderr
    assert "(rule/dependency)" in bare.stdout + bare.stderr
