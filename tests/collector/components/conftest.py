"""Fixtures for part B's component tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshwatch.collector.host import CollectorHost


@pytest.fixture
def host(tmp_path: Path) -> CollectorHost:
    """The collector's real ``Host``: a storage folder, a logger and its own self-telemetry registry."""
    return CollectorHost(tmp_path / "storage")
