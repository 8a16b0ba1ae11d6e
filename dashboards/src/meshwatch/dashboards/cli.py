"""``meshwatch-dashboards``: build, check, push the dashboards; run their queries against live backends."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

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
    p_run.add_argument("--prometheus", help="Prometheus URL, e.g. http://127.0.0.1:9090")
    p_run.add_argument("--elasticsearch", help="Elasticsearch URL")
    p_run.add_argument("--jaeger", help="Jaeger query URL")
    p_run.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="pin a template variable")
    p_run.add_argument("--range", default="1h", help="time range ending now (default 1h)")
    p_run.add_argument("--rate-interval", default="1m", help="value of $__rate_interval (default 1m)")
    p_run.add_argument("--dashboard", action="append", default=[], help="only these dashboards (file stems)")
    p_run.add_argument("--json", action="store_true", help="print results as JSON")

    p_png = sub.add_parser("render-png", help="draw each dashboard's panel layout to PNG (needs the png extra)")
    p_png.add_argument("--out", type=Path, default=build.DASHBOARDS_DIR.parent / "docs" / "img", help="folder")
    return parser


def _run_queries(args: argparse.Namespace) -> int:
    from .queries import Backends, TimeRange, _seconds, run_dashboards

    pinned: dict[str, str] = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"meshwatch-dashboards: --var needs NAME=VALUE, got {item!r}", file=sys.stderr)
            return EXIT_USAGE
        pinned[name] = value
    models = build.load_committed()
    if args.dashboard:
        unknown = set(args.dashboard) - set(models)
        if unknown:
            print(
                f"meshwatch-dashboards: unknown dashboard(s) {sorted(unknown)}; have {sorted(models)}", file=sys.stderr
            )
            return EXIT_USAGE
        models = {k: v for k, v in models.items() if k in args.dashboard}
    backends = Backends(prometheus=args.prometheus, elasticsearch=args.elasticsearch, jaeger=args.jaeger)
    time_range = TimeRange(seconds=_seconds(args.range), rate_interval=args.rate_interval)
    results = run_dashboards(models, backends, variables=pinned, time_range=time_range)
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
    elif args.command == "run-queries":
        return _run_queries(args)
    elif args.command == "render-png":
        try:
            from .layout_png import render_layout

            for name, model in build.load_committed().items():
                print(render_layout(model, args.out / f"dashboards-{name}.png"))
        except ImportError:
            print(
                "meshwatch-dashboards: render-png needs matplotlib: pip install 'meshwatch-dashboards[png]'",
                file=sys.stderr,
            )
            return EXIT_FAILED
    return EXIT_OK
