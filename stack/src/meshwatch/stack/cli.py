"""``meshwatch-stack``: install, start, inspect and stop the local backends."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import installer
from ._paths import cache_dir, default_state_dir
from ._progress import InstallError, format_duration, say
from .backends import CONSOLE_URL, JAEGER_STORAGES, SPECS, jaeger_storage
from .runner import DEFAULT_SERVERS, ORDER, Stack, StackError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshwatch-stack",
        description=(
            "Run meshwatch's real backends (Jaeger, Prometheus, Alertmanager, Elasticsearch) "
            "on this machine without Docker. Binaries are installed once into a cache "
            f"({cache_dir()}); servers bind to 127.0.0.1 only."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_install = sub.add_parser("install", help="install backends that are missing (cached per machine)")
    p_install.add_argument(
        "components",
        nargs="*",
        help=f"components (default: {' '.join(installer.DEFAULT_COMPONENTS)}; all: {' '.join(installer.COMPONENTS)})",
    )
    p_install.add_argument("--force", action="store_true", help="reinstall even if cached")

    p_up = sub.add_parser("up", help="start servers and print their URLs")
    p_up.add_argument(
        "servers",
        nargs="*",
        help=f"servers to start, of {' '.join(ORDER)} (default: {' '.join(DEFAULT_SERVERS)})",
    )
    p_up.add_argument(
        "--state-dir", type=Path, default=None, help=f"data, logs and PIDs (default {default_state_dir()})"
    )
    p_up.add_argument("--random-ports", action="store_true", help="free random ports instead of the usual ones")
    p_up.add_argument("--scrape-interval", default="15s", help="Prometheus scrape and rule interval (default 15s)")
    p_up.add_argument("--rules", type=Path, nargs="*", default=[], help="Prometheus rule files to load")
    p_up.add_argument("--es-heap", default="512m", help="Elasticsearch heap (default 512m)")
    p_up.add_argument(
        "--jaeger-storage",
        choices=JAEGER_STORAGES,
        default=None,
        help="where Jaeger keeps traces (default: $MESHWATCH_JAEGER_STORAGE, else elasticsearch, started too)",
    )

    p_down = sub.add_parser("down", help="stop the servers `up` started")
    p_down.add_argument("--state-dir", type=Path, default=None)

    p_status = sub.add_parser("status", help="show running servers and their URLs")
    p_status.add_argument("--state-dir", type=Path, default=None)

    sub.add_parser("list", help="list components and whether they are installed")
    return parser


def _print_servers(stack: Stack) -> None:
    if not stack.servers:
        print("no servers running")
        return
    for name, server in stack.servers.items():
        urls = "  ".join(f"{k}={v}" for k, v in server.urls.items())
        print(f"{name:14} pid {server.pid:<7} {urls}")
        print(f"{'':14} log {server.log}")


def _up(args: argparse.Namespace) -> int:
    """Start the named servers (Elasticsearch too when Jaeger keeps its traces there)."""
    servers = list(args.servers or DEFAULT_SERVERS)
    bad = [s for s in servers if s not in SPECS]
    if bad:
        print(f"meshwatch-stack: unknown server(s) {bad}; choose from {', '.join(SPECS)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        jaeger_options = {"storage": jaeger_storage({"storage": args.jaeger_storage})}
    except ValueError as exc:  # MESHWATCH_JAEGER_STORAGE says something else
        print(f"meshwatch-stack: {exc}", file=sys.stderr)
        return EXIT_USAGE
    on_es = jaeger_options["storage"] == "elasticsearch"
    if "jaeger" in servers and on_es and "elasticsearch" not in servers:
        say("jaeger keeps its traces in Elasticsearch: starting it too (--jaeger-storage memory not to)")
        servers.append("elasticsearch")
    installer.install([SPECS[s].component for s in servers])
    stack = Stack(args.state_dir, fixed_ports=not args.random_ports)
    for name in ORDER:
        if name not in servers:
            continue
        say(f"starting {name}…")
        started = time.monotonic()
        options: dict[str, object] = {}
        if name == "prometheus":
            options = {
                "scrape_interval": args.scrape_interval,
                "rule_files": args.rules,
                # alerts' generatorURL opens in `meshwatch-dashboards console` on its usual port
                "external_url": CONSOLE_URL,
            }
        if name == "elasticsearch":
            options = {"heap": args.es_heap}
        if name == "jaeger":
            options = dict(jaeger_options)
        stack.start(name, **options)
        say(f"{name} ready in {format_duration(time.monotonic() - started)}")
    _print_servers(stack)
    where = "" if args.state_dir is None else f" --state-dir {args.state_dir}"
    print(f"stop them with: meshwatch-stack down{where}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "install":
            started = time.monotonic()
            done = installer.install(args.components or None, force=args.force)
            what = ", ".join(done) if done else "nothing (all cached)"
            say(f"installed {what} in {format_duration(time.monotonic() - started)}; cache {cache_dir()}")
        elif args.command == "list":
            for comp in installer.COMPONENTS.values():
                mark = "installed" if comp.installed() else "missing  "
                print(f"{comp.name:14} {comp.version:10} {mark}  {comp.description}")
        elif args.command == "up":
            return _up(args)
        elif args.command == "down":
            stack = Stack(args.state_dir)
            stopped = stack.down()
            print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        elif args.command == "status":
            _print_servers(Stack(args.state_dir))
    except (InstallError, StackError, installer.BackendMissing) as exc:
        print(f"meshwatch-stack: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
