"""Pictures of a running demo, drawn from the real backends: ``meshwatch-demo render --out docs/img``.

Jaeger's web UI is not in the binary the stack builds, and Grafana cannot run on a
machine without Docker, so the documentation's images are drawn here with
matplotlib from the same APIs the dashboards use: a checkout trace's waterfall
(Jaeger ``/api/traces``), the service graph (the collector's
``traces_service_graph_request_total`` in Prometheus) and an error-rate chart
over time (Prometheus ``query_range``). Needs ``pip install meshwatch-demo[render]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from meshwatch.stack import Stack, StackError

from .platform import http_json

__all__ = ["render_waterfall", "render_service_graph", "render_error_rate", "main"]

COLOURS = {
    "gateway": "#4C72B0",
    "orders": "#DD8452",
    "inventory": "#55A868",
    "payments": "#C44E52",
    "fraud": "#8172B3",
    "notifications": "#937860",
}
#: Where each service sits in the service graph (x, y), callers left of callees.
LAYOUT = {
    "user": (0.0, 1.0),
    "gateway": (1.0, 1.0),
    "orders": (2.0, 1.0),
    "inventory": (3.0, 2.0),
    "payments": (3.0, 1.0),
    "fraud": (4.4, 1.0),
    "notifications": (3.0, 0.0),
    "SQL": (4.4, 2.2),
    "Redis": (4.4, -0.1),
}


def _node(name: str) -> str:
    """Databases appear under their file name or address (a virtual node); the picture groups them by kind."""
    if name in LAYOUT:
        return name
    return "SQL" if name.endswith(".db") or "sql" in name.lower() else "Redis"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("meshwatch-demo render needs matplotlib: pip install 'meshwatch-demo[render]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _q(url: str, **params: Any) -> Any:
    from urllib.parse import urlencode

    return http_json(f"{url}?{urlencode(params)}")


def pick_checkout_trace(jaeger_url: str) -> dict[str, Any]:
    """The most complete recent checkout: the one that reaches the most services (and notifications)."""
    traces = _q(f"{jaeger_url}/api/traces", service="gateway", operation="POST /api/checkout", limit=50)["data"]
    if not traces:
        raise StackError("no checkout trace in Jaeger yet: is the load generator running?")

    def services(trace: dict[str, Any]) -> int:
        return len({trace["processes"][s["processID"]]["serviceName"] for s in trace["spans"]})

    return max(traces, key=lambda t: (services(t), len(t["spans"])))


def _service(trace: dict[str, Any], span: dict[str, Any]) -> str:
    return trace["processes"][span["processID"]]["serviceName"]


def _operation(trace: dict[str, Any], span: dict[str, Any], children: list[dict[str, Any]]) -> str:
    """The span's name as a reader wants it: an HTTP client span ("POST") says which service it
    called, a database span names the database file, not its whole path."""
    name = span["operationName"]
    called = {_service(trace, c) for c in children} - {_service(trace, span)}
    if len(called) == 1 and " " not in name:
        return f"{name} → {called.pop()}"
    verb, _, target = name.partition(" ")
    if target.startswith("/") and target.endswith(".db"):
        return f"{verb} {target.rsplit('/', 1)[-1]}"
    return name


def render_waterfall(trace: dict[str, Any], out: Path) -> Path:
    """One bar per span on a shared time axis, in parent-before-child order, coloured by service."""
    plt = _pyplot()
    spans = {s["spanID"]: s for s in trace["spans"]}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans.values():
        parent = next((r["spanID"] for r in span.get("references", []) if r["spanID"] in spans), None)
        children.setdefault(parent, []).append(span)
    ordered: list[tuple[int, dict[str, Any]]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["startTime"]):
            ordered.append((depth, span))
            walk(span["spanID"], depth + 1)

    walk(None, 0)
    start = min(s["startTime"] for s in spans.values())
    height = 0.3 * len(ordered) + 1.0
    fig, ax = plt.subplots(figsize=(11, height))
    for row, (depth, span) in enumerate(ordered):
        service = _service(trace, span)
        tags = {t["key"]: t["value"] for t in span["tags"]}
        failed = tags.get("otel.status_code") == "ERROR"
        left, width = (span["startTime"] - start) / 1000, max(span["duration"] / 1000, 0.05)
        ax.barh(row, width, left=left, color=COLOURS.get(service, "#999999"), edgecolor="red" if failed else "none")
        label = f"{'  ' * depth}{service}: {_operation(trace, span, children.get(span['spanID'], []))}"
        ax.text(-0.01, row, label, ha="right", va="center", fontsize=8, transform=ax.get_yaxis_transform())
        ax.text(left + width, row, f" {span['duration'] / 1000:.1f} ms", va="center", fontsize=7)
    ax.set_yticks([])
    ax.set_ylim(len(ordered) - 0.4, -0.6)  # first span on top, no empty rows around
    end = max(s["startTime"] + s["duration"] for s in spans.values())
    ax.set_xlim(0, (end - start) / 1000 * 1.1)  # room for the last span's duration
    ax.set_xlabel("milliseconds since the trace started")
    services = sorted({trace["processes"][s["processID"]]["serviceName"] for s in spans.values()})
    ax.set_title(f"trace {trace['traceID']}: {len(spans)} spans in {len(services)} services", fontsize=10)
    renderer = fig.canvas.get_renderer()
    labels = ax.texts[::2]  # every other text is a duration
    longest = max(t.get_window_extent(renderer).width for t in labels) / fig.dpi
    left = min(0.45, (longest + 0.25) / 11)
    fig.subplots_adjust(left=left, right=0.97, top=1 - 0.4 / height, bottom=0.5 / height)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def render_service_graph(prometheus_url: str, out: Path, window: str = "5m") -> Path:
    """Nodes and edges from the collector's service-graph metrics, edge labels in requests per second."""
    plt = _pyplot()
    query = f"sum by (client, server, connection_type) (rate(traces_service_graph_request_total[{window}]))"
    edges = _q(f"{prometheus_url}/api/v1/query", query=query)["data"]["result"]
    if not edges:
        raise StackError("no traces_service_graph_request_total in Prometheus yet")
    merged: dict[tuple[str, str, str], float] = {}
    for edge in edges:
        kind = "messaging_system" if edge["metric"].get("connection_type") == "messaging_system" else ""
        client, server = _node(edge["metric"].get("client", "?")), _node(edge["metric"].get("server", "?"))
        merged[client, server, kind] = merged.get((client, server, kind), 0.0) + float(edge["value"][1])
    fig, ax = plt.subplots(figsize=(10, 5))
    nodes: set[str] = set()
    for (client, server, kind), rate in sorted(merged.items()):
        if rate < 0.05:  # start-up leftovers (readiness checks, the first requests)
            continue
        nodes |= {client, server}
        (x1, y1), (x2, y2) = LAYOUT[client], LAYOUT[server]
        messaging = kind == "messaging_system"
        ax.annotate(
            "",
            xy=(x2, y2),
            xytext=(x1, y1),
            arrowprops={"arrowstyle": "-|>", "lw": 1.5, "ls": "--" if messaging else "-", "shrinkA": 28, "shrinkB": 28},
        )
        note = f"{rate:.2f}/s" + (" (NATS)" if messaging else "")
        ax.text(x1 + 0.4 * (x2 - x1), y1 + 0.4 * (y2 - y1) + 0.08, note, ha="center", fontsize=8)
    for node in nodes:
        x, y = LAYOUT[node]
        ax.scatter([x], [y], s=2600, color=COLOURS.get(node, "#BBBBBB"), zorder=3)
        ax.text(x, y, node, ha="center", va="center", fontsize=8, color="white", zorder=4, weight="bold")
    ax.set_xlim(-0.6, max(x for x, _ in LAYOUT.values()) + 0.6)
    ax.set_ylim(-0.6, 2.6)
    ax.axis("off")
    ax.set_title(f"service graph from spans (traces_service_graph_request_total, rate over {window})", fontsize=10)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def render_error_rate(prometheus_url: str, out: Path, minutes: int = 10, service: str = "payments") -> Path:
    """Each service's share of 5xx answers over the last minutes: where an injected fault shows."""
    plt = _pyplot()
    end = time.time()
    total = "sum by (job) (rate(http_server_request_duration_seconds_count[30s]))"
    errors = 'sum by (job) (rate(http_server_request_duration_seconds_count{http_response_status_code=~"5.."}[30s]))'
    query = f"({errors} or {total} * 0) / {total}"  # services without a single 5xx are drawn at 0
    result = _q(f"{prometheus_url}/api/v1/query_range", query=query, start=end - 60 * minutes, end=end, step=5)["data"][
        "result"
    ]
    fig, ax = plt.subplots(figsize=(10, 4))
    for series in sorted(result, key=lambda s: s["metric"].get("job", "")):
        job = series["metric"].get("job", "?")
        xs = [(float(t) - end) / 60 for t, _ in series["values"]]
        ys = [float(v) for _, v in series["values"]]
        ax.plot(xs, ys, label=job, color=COLOURS.get(job), lw=2.2 if job == service else 1.2)
    ax.set_xlabel("minutes ago")
    ax.set_ylabel("share of HTTP answers that are 5xx")
    ax.set_ylim(-0.02, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("error rate per service (http_server_request_duration_seconds_count)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshwatch-demo render", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the PNGs (default docs/img)")
    parser.add_argument("--state-dir", type=Path, default=None, help="the running demo's state folder")
    parser.add_argument("--minutes", type=int, default=10, help="error-rate chart: how far back (default 10)")
    args = parser.parse_args(argv)
    stack = Stack(args.state_dir)
    try:
        jaeger, prometheus = stack.servers["jaeger"].url, stack.servers["prometheus"].url
    except KeyError:
        print("meshwatch-demo render: the demo is not running (make demo)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        made = [
            render_waterfall(pick_checkout_trace(jaeger), args.out / "demo-trace.png"),
            render_service_graph(prometheus, args.out / "demo-service-graph.png"),
            render_error_rate(prometheus, args.out / "demo-error-rate.png", minutes=args.minutes),
        ]
    except StackError as exc:
        print(f"meshwatch-demo render: {exc}", file=sys.stderr)
        return 1
    for path in made:
        print(f"wrote {path}")
    return 0
