"""The committed rule files and Alertmanager config are exactly what the generator writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meshwatch.alerts import Params, load_spec, render_all
from meshwatch.alerts.build import stale, write
from meshwatch.alerts.cli import main
from meshwatch.alerts.spec import SpecError

from .conftest import ALERTS


def test_committed_files_match_the_generator() -> None:
    outputs = render_all()
    assert set(outputs.files) == {
        "rules/red.rules.yml",
        "rules/pipeline.rules.yml",
        "rules/slo.rules.yml",
        "rules/meta.rules.yml",
        "alertmanager.yml",
    }
    assert stale(outputs, ALERTS) == [], "run `meshwatch-alerts build` and commit the result"


def test_build_check_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(render_all(), tmp_path)
    assert main(["build", "--check", "--out", str(tmp_path)]) == 0
    edited = tmp_path / "rules" / "red.rules.yml"
    edited.write_text(edited.read_text().replace("> 0.05", "> 0.5"))
    assert main(["build", "--check", "--out", str(tmp_path)]) == 1
    assert "rules/red.rules.yml" in capsys.readouterr().err
    assert main(["build", "--out", str(tmp_path)]) == 0
    assert stale(render_all(), tmp_path) == []


def test_test_parameters_shorten_for_and_window() -> None:
    files = render_all(params=Params(for_override="5s", red_window="15s")).files
    red = yaml.safe_load(files["rules/red.rules.yml"])
    alerts = [r for g in red["groups"] for r in g["rules"] if "alert" in r]
    assert {a["for"] for a in alerts} == {"5s"}
    assert "rate(http_server_request_duration_seconds_count[15s])" in files["rules/red.rules.yml"]


def test_alertmanager_command_sets_receiver_urls(tmp_path: Path) -> None:
    out = tmp_path / "am.yml"
    assert main(["alertmanager", "--oncall-url", "http://127.0.0.1:1/x", "-o", str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    urls = {r["name"]: r["webhook_configs"][0]["url"] for r in config["receivers"]}
    assert urls["oncall"] == "http://127.0.0.1:1/x"
    assert urls["ticket"].endswith("/webhook/ticket")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("slos: [{service: a, latency: {objective: 99, threshold_seconds: 0.3}}]", "bucket bounds"),
        ("slos: [{service: a, availability: {objective: 100}}]", "slos.0.availability.objective"),
        ("slos: [{service: a, availability: {objective: 99}}, {service: a, availability: {objective: 9}}]", "twice"),
        ("slos: [{service: a}]", "neither availability nor latency"),
        ("slos: [{service: a, availabilty: {objective: 99}}]", "slos.0.availabilty"),
        ("period: 30days\nslos: []", "period"),
        ("slos: [", "not valid YAML"),
    ],
)
def test_bad_spec_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "slos.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_spec(path)
    assert main(["build", "--spec", str(path), "--out", str(tmp_path)]) == 2


def test_a_new_slo_adds_its_rules(tmp_path: Path) -> None:
    spec = tmp_path / "slos.yaml"
    spec.write_text("period: 28d\nslos:\n  - service: search\n    latency: {objective: 95, threshold_seconds: 0.25}\n")
    text = render_all(spec).files["rules/slo.rules.yml"]
    groups = yaml.safe_load(text)["groups"]
    assert [g["name"] for g in groups] == ["meshwatch-slo-search"]
    burns = [r for r in groups[0]["rules"] if r.get("alert") == "MeshwatchErrorBudgetBurn"]
    assert [(b["labels"]["long_window"], b["labels"]["severity"]) for b in burns] == [
        ("1h", "critical"),
        ("6h", "critical"),
        ("1d", "warning"),
        ("3d", "warning"),
    ]
    # 14.4 × a 5% budget; the latency SLI reads the 0.25 s bucket.
    assert "> 0.72" in burns[0]["expr"]
    assert 'le="0.25"' in text
    assert "[28d]" in text


def test_list_tells_every_rule_apart(capsys: pytest.CaptureFixture[str]) -> None:
    """Twelve rules are MeshwatchErrorBudgetBurn: list shows their service, SLO and windows, so no two rows match."""
    assert main(["list"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["ALERT", "SEVERITY", "FOR", "SERVICE", "SLO", "WINDOWS", "RUNBOOK"]
    assert len(rows) == len(set(rows)), [r for r in rows if rows.count(r) > 1]
    burns = [r.split() for r in rows if r.startswith("MeshwatchErrorBudgetBurn")]
    assert ["MeshwatchErrorBudgetBurn", "critical", "15m", "payments", "availability", "6h", "&", "30m"] in [
        b[:-1] for b in burns
    ]
