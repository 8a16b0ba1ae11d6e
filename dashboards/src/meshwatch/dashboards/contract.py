"""The metric names dashboards may use: docs/telemetry-contract.md plus meshwatch's recording rules.

Read from the contract page itself (every backticked Prometheus name, with ``_{a,b}`` suffix
groups expanded) so a renamed metric there makes a dashboard check fail here.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

__all__ = ["REPO_ROOT", "contract_metrics", "known_metrics", "recording_rules"]

REPO_ROOT = Path(__file__).resolve().parents[4]

#: Series Prometheus makes itself, which the contract does not list.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def contract_metrics(path: Path | None = None) -> set[str]:
    text = (path or REPO_ROOT / "docs" / "telemetry-contract.md").read_text()
    names: set[str] = set()
    for word in re.findall(r"`([^`\s]+)`", text):
        match = re.fullmatch(r"([a-z_:][a-z0-9_:]*?)_?\{([a-z,]+)\}", word)
        if match:
            names |= {f"{match.group(1)}_{suffix}" for suffix in match.group(2).split(",")}
        elif re.fullmatch(r"[a-z_:][a-z0-9_:]*_[a-z0-9_:]*", word) or word == "target_info":
            names.add(word)
    return names


def recording_rules(rules_dir: Path | None = None) -> set[str]:
    names: set[str] = set()
    for path in sorted((rules_dir or REPO_ROOT / "alerts" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {r["record"] for r in group["rules"] if "record" in r}
    return names


def known_metrics() -> set[str]:
    return contract_metrics() | recording_rules() | PROMETHEUS_SERIES
