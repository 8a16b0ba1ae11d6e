"""``meshwatch-alerts``: generate the rule files and Alertmanager config, and check them."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from . import build
from .alertmanager import DEFAULT_URLS, Receivers
from .rules import Alert, Params
from .spec import SpecError, check_runbook_base_url, load_spec

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshwatch-alerts",
        description="meshwatch's Prometheus rules (RED, SLO burn rate, pipeline, watchdog) and Alertmanager config.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="regenerate alerts/rules/*.yml and alerts/alertmanager.yml from code")
    p_build.add_argument("--spec", type=Path, default=None, help="SLO spec (default alerts/slos.yaml)")
    p_build.add_argument("--out", type=Path, default=build.ALERTS_DIR, help="folder to write to (default alerts/)")
    p_build.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file is stale")
    p_build.add_argument(
        "--runbook-base-url",
        "--runbook-base",
        metavar="URL",
        default=None,
        help="prefix of every runbook_url, ending in '/', e.g. https://wiki.example.com/runbooks/ "
        "(default: the spec's runbook_base_url, else docs/runbooks/); <AlertName>.md is appended",
    )
    p_build.add_argument("--for", dest="for_override", default=None, help="replace every alert's `for` (tests only)")
    p_build.add_argument("--red-window", default=Params.red_window, help="rate window of the RED rules (default 5m)")

    p_am = sub.add_parser("alertmanager", help="print the Alertmanager config with your receiver URLs")
    for name, url in DEFAULT_URLS.items():
        p_am.add_argument(f"--{name}-url", default=url, help=f"webhook of the {name} receiver (default {url})")
    p_am.add_argument("-o", "--output", type=Path, default=None, help="write to this file instead of stdout")

    p_check = sub.add_parser("check", help="promtool check rules + amtool check-config on the committed files")
    p_check.add_argument("--promtool", default=None, help="promtool binary (default: meshwatch-stack's, else PATH)")
    p_check.add_argument("--amtool", default=None, help="amtool binary (default: meshwatch-stack's, else PATH)")
    p_check.add_argument("--dir", type=Path, default=build.ALERTS_DIR, help="alerts folder (default alerts/)")

    sub.add_parser("list", help="list every alert rule: severity, for, service, SLO, burn windows, runbook")
    return parser


def _tool(explicit: str | None, component: str, name: str) -> str:
    if explicit:
        return explicit
    try:
        from meshwatch.stack import binary

        found: str | None = str(binary(component, name))
    except Exception:  # meshwatch-stack absent or the tool not installed there: try PATH
        found = shutil.which(name)
    if not found:
        raise SystemExit(f"meshwatch-alerts: {name} not found; run `meshwatch-stack install` or pass --{name}")
    return found


def list_table(alerts: Iterable[Alert], params: Params) -> str:
    """``list``'s table: with the labels that tell one rule of an alert from another.

    Twelve rules are ``MeshwatchErrorBudgetBurn``; their service, SLO and burn windows
    (long & short) are what differ, so they are columns, ``-`` where a rule has none.
    """
    header = ("ALERT", "SEVERITY", "FOR", "SERVICE", "SLO", "WINDOWS", "RUNBOOK")
    rows = [header]
    for alert in alerts:
        labels = alert.labels
        windows = f"{labels['long_window']} & {labels['short_window']}" if "long_window" in labels else "-"
        rows.append(
            (
                alert.alert,
                alert.severity,
                alert.for_ or "-",
                labels.get("service", "-"),
                labels.get("slo", "-"),
                windows,
                params.runbook_url(alert.runbook or alert.alert),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    padded = ([cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]] for row in rows)
    return "\n".join("  ".join(cells) for cells in padded)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            if args.runbook_base_url is not None:
                try:
                    check_runbook_base_url(args.runbook_base_url)
                except ValueError as exc:
                    raise SpecError(f"--runbook-base-url: {exc}") from None
            params = Params(
                red_window=args.red_window, for_override=args.for_override, runbook_base_url=args.runbook_base_url
            )
            outputs = build.render_all(args.spec, params)
            if args.check:
                stale = build.stale(outputs, args.out)
                if stale:
                    print(f"stale (run `meshwatch-alerts build`): {', '.join(stale)}", file=sys.stderr)
                    return EXIT_FAILED
                print(f"up to date: {len(outputs.files)} files")
                return EXIT_OK
            written = build.write(outputs, args.out)
            print(f"wrote {len(written)} of {len(outputs.files)} files" + "".join(f"\n  {p}" for p in written))
        elif args.command == "alertmanager":
            receivers = Receivers(oncall=args.oncall_url, ticket=args.ticket_url, heartbeat=args.heartbeat_url)
            text = build.render_alertmanager(receivers)
            if args.output:
                args.output.write_text(text)
                print(f"wrote {args.output}")
            else:
                sys.stdout.write(text)
        elif args.command == "check":
            rules = sorted((args.dir / "rules").glob("*.yml"))
            steps = [
                [_tool(args.promtool, "prometheus", "promtool"), "check", "rules", *map(str, rules)],
                [_tool(args.amtool, "alertmanager", "amtool"), "check-config", str(args.dir / "alertmanager.yml")],
            ]
            for argv_ in steps:
                done = subprocess.run(argv_, capture_output=True, text=True)
                print(done.stdout + done.stderr, end="")
                if done.returncode != 0:
                    return EXIT_FAILED
        elif args.command == "list":
            spec = load_spec(build.default_spec_path())
            params = build.effective_params(spec)
            print(list_table(build.all_alerts(spec, params), params))
    except SpecError as exc:
        print(f"meshwatch-alerts: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
