"""The shipped collector/collector.yaml keeps its queues where docs/collector-config.md says:
``$MESHWATCH_STORAGE_DIR``, else ``~/.local/state/meshwatch-collector`` — it used to say
``./meshwatch-data``, a folder of whatever directory the collector was started in."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshwatch.collector.config import load_config

SHIPPED = Path(__file__).resolve().parents[3] / "collector" / "collector.yaml"


def test_the_shipped_config_keeps_its_queue_where_the_docs_say(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MESHWATCH_STORAGE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    assert load_config(SHIPPED).storage_dir == tmp_path / "state" / "meshwatch-collector"
    monkeypatch.setenv("MESHWATCH_STORAGE_DIR", str(tmp_path / "queue"))
    assert load_config(SHIPPED).storage_dir == tmp_path / "queue"
