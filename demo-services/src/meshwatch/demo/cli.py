"""``meshwatch-demo``: start, inspect, break and stop the demo platform.

meshwatch-demo up                          # everything, then the URLs (what `make demo` runs)
meshwatch-demo status                      # what runs, its faults, the load
meshwatch-demo fault payments --error-rate 0.2
meshwatch-demo fault payments --latency-ms 300
meshwatch-demo fault inventory --down redis
meshwatch-demo fault payments --clear
meshwatch-demo down                        # stop everything (what `make demo-down` runs)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any

from meshwatch.stack import Stack, StackError

from .config import DEFAULT_PORTS, SERVICES
from .platform import Platform, PlatformOptions, find_repo, http_json, rss_by_server

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshwatch-demo",
        description="The meshwatch demo: six FastAPI services, a load generator and fault injection, "
        "with Jaeger, Prometheus, Alertmanager and Elasticsearch behind the meshwatch collector.",
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="the stack's state folder (default: the stack's)")
    sub = parser.add_subparsers(dest="command", required=True)

    p_up = sub.add_parser("up", help="start the whole platform and print its URLs")
    p_up.add_argument("--rate", type=float, default=5.0, help="load: requests per second (0: no load; default 5)")
    p_up.add_argument("--duration", type=float, default=0.0, help="load: stop after N seconds (0: run until down)")
    p_up.add_argument("--random-ports", action="store_true", help="free random ports instead of the usual ones")
    p_up.add_argument("--scrape-interval", default="5s", help="Prometheus scrape interval (default 5s)")
    p_up.add_argument(
        "--jaeger-storage",
        choices=("elasticsearch", "memory"),
        default="elasticsearch",
        help="where Jaeger keeps traces (default elasticsearch: they outlive a Jaeger restart)",
    )

    sub.add_parser("down", help="stop everything the demo (and meshwatch-stack) started")
    sub.add_parser("status", help="show what runs, each service's faults and the load")

    p_fault = sub.add_parser("fault", help="inject or clear faults in a running service (no restart)")
    p_fault.add_argument("service", choices=SERVICES)
    p_fault.add_argument("--error-rate", type=float, help="share of requests that fail with 500, 0..1")
    p_fault.add_argument("--latency-ms", type=int, help="milliseconds added to every request")
    p_fault.add_argument("--down", nargs="+", metavar="DEP", help="make dependencies unreachable (e.g. redis, db)")
    p_fault.add_argument("--clear", action="store_true", help="remove every fault of the service")
    p_fault.add_argument("--url", help="the service's base URL (default: from the running stack, else its usual port)")

    sub.add_parser("load", help="run the load generator in the foreground (see: meshwatch-demo load --help)")
    sub.add_parser("serve", help="run one service in the foreground (see: meshwatch-demo serve --help)")
    sub.add_parser("render", help="draw a trace, the service graph and error rates to PNGs (needs matplotlib)")
    return parser


def _service_url(stack: Stack, service: str, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    if service in stack.servers:
        return stack.servers[service].url
    return f"http://127.0.0.1:{DEFAULT_PORTS[service]}"


def _describe(faults: dict[str, Any]) -> str:
    parts = []
    if faults.get("error_rate"):
        parts.append(f"error rate {faults['error_rate']:g}")
    if faults.get("latency_ms"):
        parts.append(f"+{faults['latency_ms']} ms")
    if faults.get("down"):
        parts.append(f"down: {', '.join(faults['down'])}")
    return ", ".join(parts) or "no faults"


def refusal(body: bytes) -> str:
    """The sentence in a service's error answer (``error`` or ``detail``), else the body as it came."""
    text = body.decode(errors="replace").strip()
    try:
        answer = json.loads(text)
    except ValueError:
        return text or "no reason given"
    if isinstance(answer, dict):
        for key in ("error", "detail"):
            if isinstance(answer.get(key), str):
                return answer[key]
    return text


def _fault(stack: Stack, args: argparse.Namespace) -> int:
    url = f"{_service_url(stack, args.service, args.url)}/admin/faults"
    wanted = {"error_rate": args.error_rate, "latency_ms": args.latency_ms, "down": args.down}
    change = {k: v for k, v in wanted.items() if v is not None}
    if not args.clear and not change:
        print("meshwatch-demo fault: say what: --error-rate, --latency-ms, --down or --clear", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.clear:
            http_json(url, method="DELETE")
        result = http_json(url, method="PUT", body=change) if change else http_json(url)
    except urllib.error.HTTPError as exc:
        print(f"meshwatch-demo fault: {args.service} refused: {refusal(exc.read())}", file=sys.stderr)
        return EXIT_USAGE if exc.code in (400, 422) else EXIT_FAILED
    except OSError as exc:
        print(
            f"meshwatch-demo fault: cannot reach {args.service} at {url} ({exc}); is the demo running? (make demo)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"{args.service}: {_describe(result)}")
    return EXIT_OK


def _status(stack: Stack) -> int:
    if not stack.servers:
        print("the demo is not running (start it with: make demo)")
        return EXIT_OK
    rss = rss_by_server(stack.servers)
    for name, server in stack.servers.items():
        line = f"{name:14} pid {server.pid:<7} {rss[name] / 2**20:6.0f} MiB  {server.url}"
        try:
            if name in SERVICES:
                line += f"  [{_describe(http_json(f'{server.url}/admin/faults', timeout=3))}]"
            elif name == "loadgen":
                stats = http_json(server.urls["http"], timeout=3)
                line += f"  [{stats['rate_per_s']} req/s, {stats['completed']} done, by status {stats['by_status']}]"
        except (OSError, ValueError, KeyError) as exc:
            line += f"  [not answering: {exc}]"
        print(line)
        print(f"{'':14} log {server.log}")
    print(f"memory (RSS) of all of it: {sum(rss.values()) / 2**30:.2f} GiB")
    return EXIT_OK


def url_table(urls: dict[str, str]) -> str:
    """What ``up`` prints: one ``what  URL`` line each, in the platform's order (the console first)."""
    width = max(len(k) for k in urls)
    return "\n".join(f"  {what:<{width}}  {url}" for what, url in urls.items())


def _down(stack: Stack) -> int:
    began = time.monotonic()
    stopped = stack.down(progress=lambda name: print(f"meshwatch-demo: stopping {name}…", flush=True))
    took = f" in {time.monotonic() - began:.0f}s" if stopped else ""
    print(f"stopped{took}: {', '.join(stopped)}" if stopped else "nothing was running")
    return EXIT_OK


def _up(stack: Stack, args: argparse.Namespace) -> int:
    options = PlatformOptions(
        repo=find_repo(),
        rate=args.rate,
        load_duration=args.duration,
        fixed_ports=not args.random_ports,
        scrape_interval=args.scrape_interval,
        jaeger_storage=args.jaeger_storage,
    )
    urls = Platform(stack, options).up()
    print("\nmeshwatch demo is up:\n")
    print(url_table(urls))
    gateway = stack.servers["gateway"].url
    demo = ".venv/bin/meshwatch-demo" + (f" --state-dir {args.state_dir}" if args.state_dir else "")
    stop = f"{demo} down" if args.state_dir else "make demo-down"
    print(
        f"""
Try it:
  curl -s {gateway}/api/products
  curl -s -X POST {gateway}/api/checkout -H 'content-type: application/json' \\
       -d '{{"sku": "SKU-1003", "quantity": 1, "card": "4242424242424242"}}'
Inject a fault (no restart), watch it in the console (Dashboards, Alerts), then clear it:
  {demo} fault payments --error-rate 0.2
  {demo} fault inventory --latency-ms 300
  {demo} fault inventory --down redis
  {demo} fault payments --clear
  {demo} status
Stop everything:
  {stop}"""
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # load and serve own their options; hand them over before argparse reads them.
    if argv[:1] == ["load"]:
        from .loadgen import main as load_main

        return load_main(argv[1:])
    if argv[:1] == ["serve"]:
        from .serve import main as serve_main

        return serve_main(argv[1:])
    if argv[:1] == ["render"]:
        from .render import main as render_main

        return render_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        stack = Stack(args.state_dir, fixed_ports=not getattr(args, "random_ports", False))
        if args.command == "up":
            return _up(stack, args)
        if args.command == "down":
            return _down(stack)
        if args.command == "status":
            return _status(stack)
        return _fault(stack, args)
    except StackError as exc:
        print(f"meshwatch-demo: {exc}", file=sys.stderr)
        print("meshwatch-demo: what started is still running; stop it with: make demo-down", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
