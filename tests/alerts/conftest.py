"""Paths and tools shared by the alert tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshwatch.stack import BackendMissing, binary

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
RUNBOOKS = ROOT / "docs" / "runbooks"


def _tool(component: str, name: str) -> Path:
    try:
        return binary(component, name)
    except BackendMissing as exc:
        pytest.fail(f"{name} is not installed: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def promtool() -> Path:
    return _tool("prometheus", "promtool")


@pytest.fixture(scope="session")
def amtool() -> Path:
    return _tool("alertmanager", "amtool")
