"""Drive N requests in-process through the benchmark service's ASGI app, as uvicorn would call it.

Run by ``callgrind_per_request.py`` under ``valgrind --tool=callgrind`` (bare, under
``meshwatch-run`` and under ``opentelemetry-instrument``): no sockets and no HTTP
parsing, so the instruction count is the app and its instrumentation alone, and it
is the same from run to run whatever else the machine is doing.

    python asgi_driver.py 1000 [/hello]            # N requests, then exit (the launcher flushes at exit)
    python asgi_driver.py 1000 /hello --profile    # pyinstrument: where the time goes
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def scope_for(path: str) -> dict[str, Any]:
    """The scope uvicorn (httptools) builds for ``GET path`` from wrk."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 51234),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000")],
        "state": {},
    }


async def drive(app: Any, path: str, count: int) -> int:
    statuses: dict[int, int] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    for _ in range(count):
        await app(scope_for(path), receive, send)
    return statuses.get(200, 0)


async def lifespan(app: Any, kind: str) -> None:
    """Run the app's lifespan startup (as uvicorn does) and leave it there."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await queue.put({"type": f"lifespan.{kind}"})
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        return await queue.get()

    async def send(message: dict[str, Any]) -> None:
        done.set()

    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    await done.wait()
    task.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", type=int)
    parser.add_argument("path", nargs="?", default="/hello")
    parser.add_argument("--profile", action="store_true", help="pyinstrument profile of the requests (stdout)")
    args = parser.parse_args()

    from service import app  # the benchmark's service, unchanged

    async def run() -> int:
        await lifespan(app, "startup")
        if not args.profile:
            return await drive(app, args.path, args.count)
        from pyinstrument import Profiler

        await drive(app, args.path, 50)  # warm caches first
        profiler = Profiler(interval=0.0002, async_mode="disabled")
        profiler.start()
        ok = await drive(app, args.path, args.count)
        profiler.stop()
        print(profiler.output_text(unicode=True, show_all=True, processor_options={"filter_threshold": 0.01}))
        print(profiler.output_text(unicode=True, flat=True))
        return ok

    ok = asyncio.run(run())
    if ok != args.count:
        print(f"asgi_driver: {args.count - ok} of {args.count} requests did not answer 200", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
