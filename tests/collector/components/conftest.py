"""Fixtures for part B's component tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshwatch.collector.host import CollectorHost
from meshwatch.collector.telemetry import Telemetry


@pytest.fixture
def host(tmp_path: Path) -> CollectorHost:
    """The collector's real ``Host``: a storage folder and a logger."""
    return CollectorHost(tmp_path / "storage")


@pytest.fixture
def telemetry() -> Telemetry:
    """The self-telemetry a collector hands its components (``CreateSettings.telemetry``), one per test."""
    return Telemetry()
