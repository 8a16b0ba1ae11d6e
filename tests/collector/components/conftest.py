"""Fixtures for part B's component tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._otlp import ComponentHost


@pytest.fixture
def host(tmp_path: Path) -> ComponentHost:
    return ComponentHost(storage_dir=tmp_path)
