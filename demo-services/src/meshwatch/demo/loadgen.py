"""The load generator: a shopper mix at a steady rate against the gateway, headless, light on CPU.

A small asyncio + httpx client rather than Locust: the platform runs on 2 shared
cores beside six services and four backends, and an open-loop arrival schedule
(requests start on time whether or not earlier ones finished, up to a cap) is
what makes latency faults show up as latency rather than as less traffic.

The mix is data (:data:`DEFAULT_MIX`); :func:`plan` turns one random draw into
one request, so the mix is tested without a server. ``--stats-port`` serves
``GET /stats`` (JSON counters) and ``/healthz`` for the platform and ``status``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["DEFAULT_MIX", "Request", "Shopper", "LoadStats", "plan", "run", "main"]

#: Share of each kind of request; the rest of the module only reads this.
DEFAULT_MIX: dict[str, float] = {"browse": 0.40, "view": 0.30, "checkout": 0.25, "lookup": 0.05}
SKUS = tuple(f"SKU-{n}" for n in range(1001, 1011))
#: Cards ending in 0002 are always declined by payments (a 402, a business outcome, not an error).
GOOD_CARDS = ("4242424242424242", "5555555555554444", "378282246310005", "6011111111111117")
DECLINED_CARD = "4000000000000002"
DECLINED_SHARE = 0.05
UNKNOWN_SKU_SHARE = 0.03


@dataclass(frozen=True)
class Request:
    kind: str
    method: str
    path: str
    json: dict[str, Any] | None = None


@dataclass
class Shopper:
    """What the load generator remembers between requests: recent order ids to look up."""

    recent_orders: deque[str] = field(default_factory=lambda: deque(maxlen=50))


def plan(rng: random.Random, shopper: Shopper, mix: dict[str, float] = DEFAULT_MIX) -> Request:
    """Draw the next request of the mix."""
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    if kind == "lookup" and shopper.recent_orders:
        return Request(kind, "GET", f"/api/orders/{rng.choice(shopper.recent_orders)}")
    if kind == "view":
        sku = "SKU-0000" if rng.random() < UNKNOWN_SKU_SHARE else rng.choice(SKUS)
        return Request(kind, "GET", f"/api/products/{sku}")
    if kind == "checkout":
        card = DECLINED_CARD if rng.random() < DECLINED_SHARE else rng.choice(GOOD_CARDS)
        body = {
            "sku": rng.choice(SKUS),
            "quantity": rng.randint(1, 3),
            "card": card,
            "email": f"shopper{rng.randint(1, 999)}@example.com",
        }
        return Request(kind, "POST", "/api/checkout", body)
    return Request("browse", "GET", "/api/products")


@dataclass
class LoadStats:
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    skipped: int = 0  # not started: too many requests already in flight
    by_status: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    latency_sum_s: float = 0.0
    in_flight: int = 0
    done: bool = False

    def record(self, kind: str, status: str, seconds: float) -> None:
        self.by_kind[kind] += 1
        self.by_status[status] += 1
        self.latency_sum_s += seconds

    def as_dict(self) -> dict[str, Any]:
        completed = sum(self.by_status.values())
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "sent": self.sent,
            "completed": completed,
            "skipped": self.skipped,
            "in_flight": self.in_flight,
            "rate_per_s": round(completed / elapsed, 2),
            "mean_latency_ms": round(1000 * self.latency_sum_s / completed, 1) if completed else None,
            "by_status": dict(self.by_status),
            "by_kind": dict(self.by_kind),
            "done": self.done,
        }


async def _one(client: httpx.AsyncClient, request: Request, shopper: Shopper, stats: LoadStats) -> None:
    start = time.monotonic()
    stats.in_flight += 1
    try:
        response = await client.request(request.method, request.path, json=request.json)
        status = f"{response.status_code // 100}xx"
        if request.kind == "checkout" and response.status_code == 201:
            shopper.recent_orders.append(response.json()["id"])
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    finally:
        stats.in_flight -= 1
    stats.record(request.kind, status, time.monotonic() - start)


async def run(
    base_url: str,
    *,
    rate: float,
    duration: float = 0.0,
    max_in_flight: int = 32,
    seed: int | None = None,
    stats: LoadStats | None = None,
    report_every: float = 10.0,
) -> LoadStats:
    """Send ``rate`` requests/s for ``duration`` seconds (0: until cancelled); returns the counters."""
    if rate <= 0:
        raise ValueError("rate must be > 0 requests per second")
    rng = random.Random(seed)  # noqa: S311 (a request mix, not a secret)
    shopper = Shopper()
    stats = stats or LoadStats()
    tasks: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, limits=limits) as client:
        start = next_report = time.monotonic()
        n = 0
        try:
            while not duration or time.monotonic() - start < duration:
                due = start + n / rate  # open loop: the schedule does not wait for answers
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                n += 1
                if stats.in_flight >= max_in_flight:
                    stats.skipped += 1
                    continue
                stats.sent += 1
                task = asyncio.create_task(_one(client, plan(rng, shopper), shopper, stats))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if report_every and time.monotonic() >= next_report + report_every:
                    next_report = time.monotonic()
                    print(json.dumps({"loadgen": stats.as_dict()}), flush=True)
        finally:
            if tasks:
                await asyncio.wait(tasks, timeout=30)
    stats.done = True
    return stats


async def _serve_stats(stats: LoadStats, host: str, port: int) -> asyncio.Server:
    """``GET /stats`` and ``/healthz`` on loopback: enough HTTP for a readiness check and ``status``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            line = (await asyncio.wait_for(reader.readline(), 5)).decode(errors="replace")
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            path = line.split(" ")[1] if line.count(" ") >= 2 else "/"
            code, body = ("200 OK", stats.as_dict()) if path in ("/stats", "/healthz") else ("404 Not Found", {})
            data = json.dumps(body).encode()
            head = f"HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            writer.write(head.encode() + b"Connection: close\r\n\r\n" + data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="meshwatch-demo load", description="Send a realistic shopper mix to the demo gateway."
    )
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="gateway base URL (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after N seconds (0: run until stopped)")
    parser.add_argument("--max-in-flight", type=int, default=32, help="concurrent requests cap (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable sequence")
    parser.add_argument("--stats-port", type=int, default=0, help="serve GET /stats on PORT (0: off)")
    parser.add_argument(
        "--stats-host", default="127.0.0.1", help="address of the stats endpoint (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration < 0 or args.max_in_flight < 1:
        parser.error("--rate must be > 0, --duration >= 0 and --max-in-flight >= 1")

    async def go() -> LoadStats:
        stats = LoadStats()
        server = await _serve_stats(stats, args.stats_host, args.stats_port) if args.stats_port else None
        task = asyncio.ensure_future(
            run(
                args.gateway,
                rate=args.rate,
                duration=args.duration,
                max_in_flight=args.max_in_flight,
                seed=args.seed,
                stats=stats,
            )
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if server is not None:
            server.close()
        return stats

    until = f" for {args.duration:g}s" if args.duration else ""
    print(f"load: {args.rate:g} req/s to {args.gateway}{until}", flush=True)
    stats = asyncio.run(go())
    print(json.dumps({"loadgen": stats.as_dict()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
