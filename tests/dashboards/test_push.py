"""What `meshwatch-dashboards push` sends, checked against Grafana's HTTP API and dashboard model.

No Grafana server can run on this machine (see docs/development.md), so the live push is not tested here:
these tests pin the request plan (paths, methods, bodies) and run the real grafana-client
against a closed port to check the failure path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from meshwatch.dashboards import build
from meshwatch.dashboards.cli import main
from meshwatch.dashboards.datasources import Urls
from meshwatch.dashboards.push import plan


def test_plan_creates_folder_then_datasources_then_dashboards() -> None:
    requests = plan(Urls("http://127.0.0.1:9090", "http://127.0.0.1:16686", "http://127.0.0.1:9200"))
    assert [r.kind for r in requests] == ["folder"] + ["datasource"] * 3 + ["dashboard"] * 6
    folder = requests[0]
    assert (folder.method, folder.path, folder.create_method, folder.create_path) == (
        "PUT",
        "/api/folders/meshwatch",
        "POST",
        "/api/folders",
    )
    for ds in requests[1:4]:
        assert ds.path == f"/api/datasources/uid/{ds.body['uid']}"
        assert {"name", "type", "uid", "url", "access", "jsonData"} <= set(ds.body)
        assert ds.body["url"].startswith("http://127.0.0.1:")
    # Over the API, links keep a single `$` (only provisioning files need `$$`).
    es = next(r.body for r in requests if r.body.get("type") == "elasticsearch")
    assert es["jsonData"]["dataLinks"][0]["url"] == "${__value.raw}"
    for dash in requests[4:]:
        assert (dash.method, dash.path) == ("POST", "/api/dashboards/db")
        assert dash.body["folderUid"] == "meshwatch" and dash.body["overwrite"] is True
        assert dash.body["dashboard"]["id"] is None  # Grafana assigns it; the uid identifies the dashboard
        assert dash.body["dashboard"]["uid"].startswith("meshwatch-")


@pytest.mark.parametrize("name", sorted(build.load_committed()))
def test_dashboards_follow_grafana_s_dashboard_model(name: str) -> None:
    """Each committed dashboard parses into the SDK's (Grafana schema) model and back without loss."""
    committed = build.load_committed()[name]
    again = json.loads(json.dumps(Dashboard.from_json(committed), cls=JSONEncoder))
    assert again["uid"] == committed["uid"] and again["schemaVersion"] == committed["schemaVersion"]
    assert [p["title"] for p in again["panels"]] == [p["title"] for p in committed["panels"]]
    for before, after in zip(committed["panels"], again["panels"], strict=True):
        assert set(before) <= set(after) | {"id"}
        assert before.get("targets") == after.get("targets")


def test_dry_run_prints_requests_and_never_the_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["push", "--url", "http://127.0.0.1:3000", "--token", "glsa_secret123", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "glsa_secret123" not in out
    assert out.count("POST /api/dashboards/db") == 6
    assert "PUT /api/datasources/uid/meshwatch-jaeger" in out
    assert "dry run: 10 requests to http://127.0.0.1:3000, nothing sent" in out
    assert '"uid": "meshwatch-service-overview"' in out


def test_push_without_token_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    assert main(["push", "--url", "http://127.0.0.1:3000"]) == 2
    assert "--token" in capsys.readouterr().err


def test_push_to_an_unreachable_grafana_fails_clearly(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["push", "--url", "http://127.0.0.1:1", "--token", "glsa_secret123"]) == 1
    err = capsys.readouterr().err
    assert "push to http://127.0.0.1:1 failed" in err
    assert "glsa_secret123" not in err
