"""Runbook links an on-call engineer can click: the generator's base URL and the pages that serve them.

The committed rules keep ``docs/runbooks/<AlertName>.md`` (a path in the repository); a deployment
sets ``runbook_base_url`` (alerts/slos.yaml or ``meshwatch-alerts build --runbook-base-url``), and
the demo's on-call service serves docs/runbooks at ``/runbooks/<AlertName>[.md]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from meshwatch.alerts import Params, load_spec, render_all
from meshwatch.alerts.cli import main as alerts_main
from meshwatch.alerts.spec import SpecError
from meshwatch.demo.oncall import OncallServer

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "alerts" / "slos.yaml"


def _runbook_urls(files: dict[str, str]) -> set[str]:
    urls = set()
    for name, text in files.items():
        if name.startswith("rules/"):
            for group in yaml.safe_load(text)["groups"]:
                urls |= {r["annotations"]["runbook_url"] for r in group["rules"] if "alert" in r}
    return urls


def test_committed_rules_keep_repository_relative_runbook_paths() -> None:
    assert load_spec(SPEC).runbook_base_url == "docs/runbooks/"
    urls = _runbook_urls(render_all().files)
    assert len(urls) == 15
    assert all(url.startswith("docs/runbooks/") and (ROOT / url).is_file() for url in urls)


def test_base_url_from_the_spec_and_from_the_command_line(tmp_path: Path) -> None:
    spec = tmp_path / "slos.yaml"
    spec.write_text(SPEC.read_text().replace("runbook_base_url: docs/runbooks/", "runbook_base_url: https://wiki/rb/"))
    assert _runbook_urls(render_all(spec).files) >= {
        "https://wiki/rb/Watchdog.md",
        "https://wiki/rb/MeshwatchTargetDown.md",
    }
    # The command line wins over the spec; Params do the same for code.
    out = tmp_path / "out"
    argv = ["build", "--spec", str(spec), "--out", str(out), "--runbook-base-url", "http://h:9095/runbooks/"]
    assert alerts_main(argv) == 0
    red = yaml.safe_load((out / "rules" / "red.rules.yml").read_text())
    assert {r["annotations"]["runbook_url"] for g in red["groups"] for r in g["rules"] if "alert" in r} >= {
        "http://h:9095/runbooks/MeshwatchHTTPErrorRateHigh.md"
    }
    params = Params(runbook_base_url="https://x/")
    assert _runbook_urls(render_all(spec, params).files) >= {"https://x/Watchdog.md"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://h/runbooks", "must end with '/'"),
        ("javascript:alert(1)/", "http(s) URL or a path"),
        ("http://h/{{ $labels.x }}/", "spaces, quotes"),
        ("", "empty"),
    ],
)
def test_a_bad_base_url_is_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    assert alerts_main(["build", "--out", str(tmp_path), "--runbook-base-url", value]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "rules").exists()  # nothing written
    spec = tmp_path / "slos.yaml"
    spec.write_text(f"runbook_base_url: '{value}'\nslos: [{{service: a, availability: {{objective: 99}}}}]\n")
    with pytest.raises(SpecError, match="runbook_base_url"):
        load_spec(spec)


@pytest.fixture
def runbooks(tmp_path: Path) -> Path:
    folder = tmp_path / "runbooks"
    folder.mkdir()
    (folder / "README.md").write_text("# Our runbooks\n\n- [DiskFull](DiskFull.md)\n")
    (folder / "DiskFull.md").write_text(
        "# DiskFull\n\n## Meaning\nThe disk is **full**. <script>alert(1)</script>\n\n| a | b |\n| - | - |\n| 1 | 2 |\n"
    )
    return folder


@pytest.fixture
def oncall(runbooks: Path) -> Iterator[OncallServer]:
    with OncallServer(port=0, runbooks=runbooks) as server:
        yield server


def test_oncall_serves_a_runbook_as_a_page(oncall: OncallServer) -> None:
    assert oncall.runbook_base_url == f"{oncall.url}/runbooks/"
    for path in ("DiskFull", "DiskFull.md"):
        page = httpx.get(oncall.runbook_base_url + path)
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "<title>DiskFull · meshwatch runbook</title>" in page.text
        assert "<h1>DiskFull</h1>" in page.text and "<strong>full</strong>" in page.text
        assert "<table>" in page.text  # tables, as the runbooks' index uses
        assert "<script>" not in page.text and "&lt;script&gt;" in page.text  # raw HTML is shown, not run
    index = httpx.get(oncall.runbook_base_url)
    assert index.status_code == 200 and "<h1>Our runbooks</h1>" in index.text
    assert 'href="DiskFull.md"' in index.text


@pytest.mark.parametrize("path", ["Nope", "..%2FREADME", "..%2F..%2Fetc%2Fpasswd", "a.b.md", "%00"])
def test_unknown_or_unsafe_runbook_names_are_404(oncall: OncallServer, path: str) -> None:
    response = httpx.get(f"{oncall.url}/runbooks/{path}")
    assert response.status_code == 404
    assert "the runbooks are: DiskFull" in response.text
    assert httpx.get(f"{oncall.url}/healthz").json()["status"] == "ok"


def test_without_a_runbooks_folder_the_404_says_how_to_configure_one(tmp_path: Path) -> None:
    with OncallServer(port=0, runbooks=tmp_path / "none") as server:
        response = httpx.get(server.runbook_base_url + "DiskFull")
        assert response.status_code == 404 and "the runbooks are: (none)" in response.text


def test_the_oncall_page_links_alerts_to_their_runbooks(oncall: OncallServer) -> None:
    def payload(name: str, url: str) -> dict:
        alert = {"status": "firing", "labels": {"alertname": name}, "annotations": {"runbook_url": url}}
        return {"status": "firing", "alerts": [{**alert, "fingerprint": name}]}

    httpx.post(oncall.webhook_url("oncall"), json=payload("DiskFull", oncall.runbook_base_url + "DiskFull.md"))
    httpx.post(oncall.webhook_url("oncall"), json=payload("Local", "docs/runbooks/Local.md"))
    httpx.post(oncall.webhook_url("oncall"), json=payload("Evil", "javascript:alert(1)"))
    page = httpx.get(oncall.url + "/").text
    assert f"<a href='{oncall.runbook_base_url}DiskFull.md'>runbook</a>" in page
    assert "<td>docs/runbooks/Local.md</td>" in page  # a repository path is shown, not linked
    assert "href='javascript" not in page
