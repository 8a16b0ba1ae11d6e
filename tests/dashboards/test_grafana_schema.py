"""Every dashboard JSON passes Grafana's own schema, as grafana-foundation-sdk/go v0.0.22 publishes it.

The check is ``Dashboard.UnmarshalJSONStrict`` with the SDK's panel and query plugins
registered (``stack/src/meshwatch/stack/go/dashboard-schema``, built by ``meshwatch-stack``):
a missing, mistyped or unknown field anywhere in a dashboard, its panels or targets is an
error with its path. No allow-list was needed for the six dashboards.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from meshwatch.stack import binary
from meshwatch.stack.installer import BackendMissing

# a tool meshwatch-stack installs (a backend binary): not for `make unit`
pytestmark = pytest.mark.integration

BOARDS = sorted((Path(__file__).parents[2] / "dashboards" / "json").glob("*.json"))


@pytest.fixture(scope="module")
def checker() -> Path:
    try:
        return binary("dashboard-schema")
    except BackendMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def _check(checker: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(checker), *map(str, files)], capture_output=True, text=True, timeout=60)


def test_every_dashboard_passes_grafanas_schema(checker: Path) -> None:
    assert len(BOARDS) == 6
    done = _check(checker, *BOARDS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": ok (") == len(BOARDS), done.stdout


def test_a_mistyped_or_unknown_field_is_refused_with_its_path(checker: Path, tmp_path: Path) -> None:
    """Positive control: the schema check fails on a dashboard one edit away from ours."""
    board = json.loads(BOARDS[0].read_text())
    board["panels"][0]["fieldConfg"] = board["panels"][0].pop("fieldConfig", {})  # misspelt key
    board["tags"] = "red"  # a string where Grafana wants a list
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps(board))
    done = _check(checker, planted)
    assert done.returncode == 1
    assert "panels[0].Panel: unexpected field 'fieldConfg'" in done.stdout, done.stdout
    assert "tags: json: cannot unmarshal string" in done.stdout, done.stdout
