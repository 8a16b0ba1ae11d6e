"""``meshwatch-dashboards``: build, check, push the dashboards; run their queries against live backends."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import build
from .check import check_all
from .contract import known_metrics
from .datasources import DEFAULT_URLS, Urls

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshwatch-dashboards",
        description="meshwatch's Grafana dashboards as code: generate the JSON, check it, push it to Grafana.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_build = sub.add_parser("build", help="regenerate dashboards/json/*.json and the provisioning files")
    p_build.add_argument("--out", type=Path, default=build.DASHBOARDS_DIR, help="folder (default dashboards/)")
    p_build.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file is stale")

    p_check = sub.add_parser("check", help="schema checks: datasource uids, variables, ids, contract names")
    p_check.add_argument("--dir", type=Path, default=build.DASHBOARDS_DIR, help="folder holding json/")

    p_push = sub.add_parser("push", help="push folder, datasources and dashboards to Grafana's HTTP API")
    p_push.add_argument("--url", required=True, help="Grafana base URL, e.g. http://127.0.0.1:3000")
    p_push.add_argument(
        "--token", default=os.environ.get("GRAFANA_TOKEN"), help="service account token (default: $GRAFANA_TOKEN)"
    )
    p_push.add_argument("--dry-run", action="store_true", help="print the requests instead of sending them")
    for name, url in DEFAULT_URLS.items():
        p_push.add_argument(f"--{name}-url", default=url, help=f"{name} URL as Grafana reaches it (default {url})")

    p_run = sub.add_parser(
        "run-queries", help="run every panel's queries against live backends; exit 1 if any is empty"
    )
    _query_options(p_run)
    p_run.add_argument("--json", action="store_true", help="print results as JSON")

    p_png = sub.add_parser(
        "render-png",
        help="draw each dashboard to PNG: with backends, its panels with their live data; without, the layout"
        " (needs the png extra)",
        description="Draw dashboards/json/*.json to <out>/dashboards-<name>.png. Given --prometheus,"
        " --elasticsearch and --jaeger, every panel's queries run against them (as run-queries does) and each"
        " panel is drawn with its data at its grid position; without any backend, only the panel layout.",
    )
    p_png.add_argument("--out", type=Path, default=build.DASHBOARDS_DIR.parent / "docs" / "img", help="folder")
    _query_options(p_png)
    p_png.add_argument(
        "--end", help="end of the time range: Unix seconds or ISO 8601 (default now)", type=_timestamp, default=None
    )
    p_png.add_argument("--step", type=int, default=None, help="seconds between points (default: range / 200)")
    p_png.add_argument("--dpi", type=float, default=100, help="resolution (default 100)")

    from .console.backends import DEFAULT_BACKENDS

    p_console = sub.add_parser(
        "console",
        help="serve the dashboards, metrics, traces, logs and alerts as a web page on loopback",
        description="A web page over the live backends: the dashboards of dashboards/json/ drawn from their"
        " queries, a PromQL explorer, trace search and waterfall, log search, firing and pending alerts.",
    )
    p_console.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p_console.add_argument("--port", type=int, default=3001, help="port (default 3001; 0 picks a free one)")
    for name, url in DEFAULT_BACKENDS.items():
        p_console.add_argument(f"--{name}", default=url, help=f"{name} URL (default {url})")
    p_console.add_argument("--quiet", action="store_true", help="do not log each request")
    return parser


def _query_options(parser: argparse.ArgumentParser) -> None:
    """What run-queries and render-png share: backends, variables, the time range, dashboards."""
    parser.add_argument("--prometheus", help="Prometheus URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--elasticsearch", help="Elasticsearch URL")
    parser.add_argument("--jaeger", help="Jaeger query URL")
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="[DASHBOARD:]NAME=VALUE",
        help="pin a template variable (in one dashboard only with its file stem, e.g. endpoint-detail:service=gateway)",
    )
    parser.add_argument("--range", default="1h", help="time range ending now (or at --end), e.g. 30m (default 1h)")
    parser.add_argument("--rate-interval", default="1m", help="value of $__rate_interval (default 1m)")
    parser.add_argument("--dashboard", action="append", default=[], help="only these dashboards (file stems)")


def _timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (Unix seconds or ISO 8601)") from None


class _UsageError(Exception):
    pass


def _pins(args: argparse.Namespace, models: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Pinned variables per dashboard stem: ``NAME=VALUE`` for all, ``STEM:NAME=VALUE`` for one."""
    pins: dict[str, dict[str, str]] = {name: {} for name in models}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep:
            raise _UsageError(f"--var needs NAME=VALUE, got {item!r}")
        stem, colon, name = name.rpartition(":")
        if colon and stem not in pins:
            raise _UsageError(f"--var {item!r}: no dashboard {stem!r}; have {sorted(pins)}")
        for dashboard in [stem] if colon else pins:
            pins[dashboard][name] = value
    return pins


def _selected(args: argparse.Namespace) -> dict[str, Any]:
    models = build.load_committed()
    if args.dashboard:
        unknown = set(args.dashboard) - set(models)
        if unknown:
            raise _UsageError(f"unknown dashboard(s) {sorted(unknown)}; have {sorted(models)}")
        models = {k: v for k, v in models.items() if k in args.dashboard}
    return models


def _run_queries(args: argparse.Namespace) -> int:
    from .queries import Backends, TimeRange, _seconds, run_dashboard

    models = _selected(args)
    pins = _pins(args, models)
    backends = Backends(prometheus=args.prometheus, elasticsearch=args.elasticsearch, jaeger=args.jaeger)
    time_range = TimeRange(seconds=_seconds(args.range), rate_interval=args.rate_interval)
    results = []
    for name, model in models.items():
        results += run_dashboard(model, backends, variables=pins[name], time_range=time_range).results
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "query": r.query.name,
                        "datasource": r.query.datasource,
                        "items": r.items,
                        "has_data": r.has_data,
                        "error": r.error,
                        "exemplars": r.exemplars,
                        "nan_series": r.nan_series,
                    }
                    for r in results
                ],
                indent=1,
            )
        )
    else:
        for r in results:
            mark = "ok   " if r.has_data else "EMPTY" if r.error is None else "ERROR"
            extra = f"  exemplars={r.exemplars}" if r.exemplars is not None else ""
            extra += f"  (+{r.nan_series} NaN-only series)" if r.nan_series else ""
            print(f"{mark} {r.items:5d}  {r.query.name}{extra}" + (f"\n        {r.error}" if r.error else ""))
        print(f"{sum(r.has_data for r in results)} of {len(results)} queries returned data")
    return EXIT_OK if all(r.has_data for r in results) else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "build":
        files = build.render_all()
        if args.check:
            stale = build.stale(files, args.out)
            if stale:
                print(f"stale (run `meshwatch-dashboards build`): {', '.join(stale)}", file=sys.stderr)
                return EXIT_FAILED
            print(f"up to date: {len(files)} files")
            return EXIT_OK
        written = build.write(files, args.out)
        print(f"wrote {len(written)} of {len(files)} files" + "".join(f"\n  {p}" for p in written))
    elif args.command == "check":
        models = build.load_committed(args.dir)
        if not models:
            print(f"meshwatch-dashboards: no dashboards in {args.dir / 'json'}", file=sys.stderr)
            return EXIT_FAILED
        problems = check_all(models, known_metrics=known_metrics())
        for problem in problems:
            print(problem)
        panels = sum(len(m.get("panels", [])) for m in models.values())
        print(f"{len(models)} dashboards, {panels} panels: {len(problems)} problem(s)")
        return EXIT_FAILED if problems else EXIT_OK
    elif args.command == "push":
        from .push import apply, plan

        requests = plan(Urls(args.prometheus_url, args.jaeger_url, args.elasticsearch_url))
        if args.dry_run:
            for request in requests:
                print(
                    f"{request.method} {request.path}"
                    + (f"  (404 → {request.create_method} {request.create_path})" if request.create_path else "")
                )
                print(json.dumps(request.body, indent=1, sort_keys=True))
            print(f"dry run: {len(requests)} requests to {args.url}, nothing sent")
            return EXIT_OK
        if not args.token:
            print(
                "meshwatch-dashboards: push needs --token or $GRAFANA_TOKEN (a service account token)", file=sys.stderr
            )
            return EXIT_USAGE
        try:
            apply(requests, args.url, args.token)
        except Exception as exc:  # grafana_client and niquests errors: say what failed, never the token
            print(f"meshwatch-dashboards: push to {args.url} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"pushed {len(requests)} objects to {args.url}")
    elif args.command == "console":
        return _console(args)
    elif args.command in ("run-queries", "render-png"):
        try:
            return _run_queries(args) if args.command == "run-queries" else _render_png(args)
        except _UsageError as exc:  # bad --dashboard or --var
            print(f"meshwatch-dashboards: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return EXIT_OK


def _render_png(args: argparse.Namespace) -> int:
    """Layout pictures without backends; with them, every panel drawn from its live data."""
    try:
        import matplotlib  # noqa: F401  (the png extra)
    except ImportError:
        print(
            "meshwatch-dashboards: render-png needs matplotlib: pip install 'meshwatch-dashboards[png]'",
            file=sys.stderr,
        )
        return EXIT_FAILED
    models = _selected(args)
    pins = _pins(args, models)
    if not (args.prometheus or args.elasticsearch or args.jaeger):
        from .layout_png import render_layout

        for name, model in models.items():
            print(render_layout(model, args.out / f"dashboards-{name}.png"))
        return EXIT_OK
    from .queries import Backends, TimeRange, _seconds, run_dashboard
    from .render import render_dashboard

    backends = Backends(prometheus=args.prometheus, elasticsearch=args.elasticsearch, jaeger=args.jaeger)
    end = {"end": args.end} if args.end is not None else {}
    time_range = TimeRange(seconds=_seconds(args.range), rate_interval=args.rate_interval, step=args.step, **end)
    failed = False
    for name, model in models.items():
        run = run_dashboard(model, backends, variables=pins[name], time_range=time_range)
        path = args.out / f"dashboards-{name}.png"
        rendered = render_dashboard(
            model, run.results, path, time_range=time_range, variables=run.variables, dpi=args.dpi
        )
        drawn = sum(1 for n in rendered.drawn.values() if n)
        print(f"{path}  ({drawn} of {len(rendered.drawn)} panels with data, {path.stat().st_size // 1024} KiB)")
        for title in rendered.empty:
            print(f"  no data: {title}")
        for title, errors in rendered.errors.items():
            failed = True
            for error in errors:
                print(f"  query failed: {title} {error}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _console(args: argparse.Namespace) -> int:
    from .console import ConsoleConfig, make_server

    config = ConsoleConfig(
        prometheus=args.prometheus, jaeger=args.jaeger, elasticsearch=args.elasticsearch, alertmanager=args.alertmanager
    )
    try:
        server = make_server(config, args.host, args.port, quiet=args.quiet)
    except OSError as exc:
        print(f"meshwatch-dashboards: console cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"meshwatch console: {server.url}", flush=True)
    for name in ("prometheus", "jaeger", "elasticsearch", "alertmanager"):
        print(f"  {name:<13} {getattr(config, name)}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK
