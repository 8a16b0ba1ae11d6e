"""No alert goes untested or without a runbook: a new rule without both fails here."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from .conftest import ALERTS, ROOT, RUNBOOKS

RUNBOOK_SECTIONS = ("## Meaning", "## Impact", "## Diagnose", "## Fix")
DASHBOARDS = (
    "meshwatch / Service overview",
    "meshwatch / Endpoint detail",
    "meshwatch / Service dependencies",
    "meshwatch / Logs",
    "meshwatch / Collector and pipeline health",
    "meshwatch / SLOs and error budgets",
)


def _alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in sorted((ALERTS / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [r for r in group["rules"] if "alert" in r]
    return rules


def _rule_tests() -> list[dict[str, Any]]:
    cases = []
    for path in sorted((ALERTS / "tests").glob("*.test.yml")):
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases += test.get("alert_rule_test", [])
    return cases


RULES = _alert_rules()
CASES = _rule_tests()


def _rule_id(rule: dict[str, Any]) -> str:
    labels = ",".join(f"{k}={v}" for k, v in rule["labels"].items() if k != "service")
    return f"{rule['alert']}[{labels}]"


def test_there_are_alerts_of_every_kind() -> None:
    names = {r["alert"] for r in RULES}
    assert {"Watchdog", "MeshwatchErrorBudgetBurn", "MeshwatchBackendUnreachable", "MeshwatchTargetDown"} <= names
    assert len(names) == 15


@pytest.mark.parametrize("rule", RULES, ids=_rule_id)
def test_every_alert_rule_has_a_firing_case(rule: dict[str, Any]) -> None:
    """Some test expects this rule's alert, with the rule's own labels (all but the per-service one)."""
    wanted = {k: v for k, v in rule["labels"].items() if k != "service"}
    expected = [
        alert
        for case in CASES
        if case["alertname"] == rule["alert"]
        for alert in case.get("exp_alerts") or []
        if wanted.items() <= {k: str(v) for k, v in alert["exp_labels"].items()}.items()
    ]
    assert expected, f"no promtool test expects {_rule_id(rule)} to fire: add one to alerts/tests/"
    for alert in expected:
        assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
        if rule["alert"] != "Watchdog":  # promtool checks labels exactly, so the rule does emit `service`
            assert "service" in alert["exp_labels"], "per-service alerts carry a `service` label"


@pytest.mark.parametrize("name", sorted({r["alert"] for r in RULES if r["alert"] != "Watchdog"}))
def test_every_alert_has_a_silent_case(name: str) -> None:
    silent = [c for c in CASES if c["alertname"] == name and not c.get("exp_alerts")]
    assert len(silent) >= 2, f"{name} needs a 'minute before' case and a healthy-input case"


@pytest.mark.parametrize("rule", RULES, ids=_rule_id)
def test_every_alert_has_labels_annotations_and_a_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in ({"none"} if rule["alert"] == "Watchdog" else {"critical", "warning"})
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert annotations["runbook_url"] == f"docs/runbooks/{rule['alert']}.md"
    runbook = ROOT / annotations["runbook_url"]
    assert runbook.is_file(), f"write {runbook.relative_to(ROOT)}"
    text = runbook.read_text()
    assert text.startswith(f"# {rule['alert']}\n")
    for section in RUNBOOK_SECTIONS:
        assert section in text, f"{runbook.name} lacks {section}"


def test_runbooks_name_only_dashboards_that_exist() -> None:
    for page in RUNBOOKS.glob("*.md"):
        for mention in re.findall(r"\*\*(meshwatch / [^*]+)\*\*", page.read_text()):
            assert mention in DASHBOARDS, f"{page.name} names a dashboard that does not exist: {mention}"


def test_every_runbook_belongs_to_an_alert() -> None:
    names = {r["alert"] for r in RULES}
    pages = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == names
    index = (RUNBOOKS / "README.md").read_text()
    for name in names:
        assert f"[{name}.md]({name}.md)" in index
