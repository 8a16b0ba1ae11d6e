"""Alert latency on the demo with the shipped rules and routing: fault → page, clear → resolved.

The demo is started as ``make demo`` starts it (its own stack on free ports, the shipped
rules generated from alerts/slos.yaml with their production ``for`` and 5-minute RED
window, Alertmanager with the shipped alerts/alertmanager.yml: ``group_wait`` 30 s,
``group_interval`` 5 m), then, per round: wait until payments is healthy and its
``MeshwatchHTTPErrorRateHigh`` is not active, make half its requests fail through the
fault API, and time

* Prometheus' alert going ``pending`` and ``firing`` (its ``activeAt`` and the first poll
  that saw it firing),
* the page: the first notification of that alert, ``firing``, at the demo's on-call webhook,
* after ``--clear``, the ``resolved`` notification at the webhook.

Every page the fault raised (the SLO burn alerts too) is listed with its own delay. Raw
rounds, with the commit and the load average, go to ``--output`` (default
``bench/results/alert-latency.json``). A run takes ≈10–15 minutes per round.

    .venv/bin/python bench/demo/alert_latency.py [--rounds 3] [--error-rate 0.5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "collector"))
from _results import RESULTS, Recorder, spread

from meshwatch.demo import cli
from meshwatch.demo.platform import Platform, PlatformOptions
from meshwatch.stack import Stack

ALERT = "MeshwatchHTTPErrorRateHigh"
SERVICE = "payments"


def _get(url: str, **params: Any) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}{query}", timeout=10) as response:
        return json.loads(response.read())


def _prom_alert(prometheus: str) -> dict[str, Any] | None:
    for alert in _get(f"{prometheus}/api/v1/alerts")["data"]["alerts"]:
        labels = alert["labels"]
        if labels.get("alertname") == ALERT and labels.get("service") == SERVICE:
            return alert
    return None


def _pages(oncall: str, status: str, since: float) -> list[dict[str, Any]]:
    """The on-call receiver's latest state per alert, notified after ``since`` with ``status``."""
    return [
        a
        for a in _get(f"{oncall}/api/alerts", receiver="oncall", status=status)
        if a["notified_at"] >= since and a["labels"].get("service") == SERVICE
    ]


def _ratio(prometheus: str) -> float | None:
    result = _get(
        f"{prometheus}/api/v1/query",
        query=f'job_service:http_server_error_ratio:rate5m{{service="{SERVICE}"}}',
    )["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _wait(what: str, check, timeout: float, poll: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def one_round(platform: Platform, state: list[str], error_rate: float, timeout: float) -> dict[str, Any]:
    prometheus = platform.server("prometheus").url
    oncall = platform.server("oncall").url
    _wait(
        f"{SERVICE} healthy and {ALERT} inactive",
        lambda: (r := _ratio(prometheus)) is not None and r < 0.01 and _prom_alert(prometheus) is None,
        timeout,
        poll=5,
    )
    injected = time.time()
    assert cli.main([*state, "fault", SERVICE, "--error-rate", str(error_rate)]) == 0
    pending_seen = firing_seen = None
    while True:
        alert = _prom_alert(prometheus)
        now = time.time()
        if alert and pending_seen is None:
            pending_seen = now
        if alert and alert["state"] == "firing" and firing_seen is None:
            firing_seen = now
        paged = [a for a in _pages(oncall, "firing", injected) if a["labels"].get("alertname") == ALERT]
        if paged:
            break
        if now - injected > timeout:
            raise SystemExit(f"{ALERT} for {SERVICE} did not page within {timeout:.0f}s")
        time.sleep(1)
    paged_at = paged[0]["notified_at"]
    other_pages = {
        a["labels"]["alertname"]: round(a["notified_at"] - injected, 1) for a in _pages(oncall, "firing", injected)
    }
    cleared = time.time()
    assert cli.main([*state, "fault", SERVICE, "--clear"]) == 0
    resolved = _wait(
        f"{ALERT} for {SERVICE} resolved at the on-call webhook",
        lambda: [a for a in _pages(oncall, "resolved", cleared) if a["labels"].get("alertname") == ALERT],
        timeout,
    )
    result = {
        "pending_after_s": (pending_seen or paged_at) - injected,
        "firing_after_s": (firing_seen or paged_at) - injected,
        "paged_after_s": paged_at - injected,
        "resolved_after_clear_s": resolved[0]["notified_at"] - cleared,
        "fault_held_s": cleared - injected,
        "pages_during_the_fault": other_pages,
    }
    print("  " + json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--error-rate", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for each step")
    parser.add_argument("--output", default=str(RESULTS / "alert-latency.json"))
    args = parser.parse_args()
    recorder = Recorder("bench/demo/alert_latency.py " + " ".join(sys.argv[1:]))
    state_dir = Path(tempfile.mkdtemp(prefix="meshwatch-bench-alerts-"))
    state_dir.chmod(0o755)
    stack = Stack(state_dir)
    platform = Platform(stack, PlatformOptions(fixed_ports=False))
    rounds: list[dict[str, Any]] = []
    try:
        platform.up()
        state = ["--state-dir", str(state_dir)]
        for index in range(args.rounds):
            print(f"round {index + 1}/{args.rounds}: {SERVICE} fails {args.error_rate:.0%} of requests", flush=True)
            rounds.append(one_round(platform, state, args.error_rate, args.timeout))
    finally:
        platform.stop_processes()
        stack.down()
    summary = {
        key: spread([r[key] for r in rounds])
        for key in ("pending_after_s", "firing_after_s", "paged_after_s", "resolved_after_clear_s")
    }
    print(json.dumps(summary, indent=2))
    print(
        f"fault → page median {statistics.median(r['paged_after_s'] for r in rounds):.0f}s; "
        f"clear → resolved median {statistics.median(r['resolved_after_clear_s'] for r in rounds):.0f}s"
    )
    recorder.write(
        Path(args.output),
        {
            "alert": ALERT,
            "service": SERVICE,
            "error_rate": args.error_rate,
            "rules": "alerts/slos.yaml with production Params (for, 5m RED window)",
            "routing": "alerts/alertmanager.yml (group_wait 30s, group_interval 5m)",
            "rounds": rounds,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
