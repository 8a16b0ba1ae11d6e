"""Run one demo service with uvicorn: ``meshwatch-demo serve orders --port 8081``.

The service module is imported first, so its ``meshwatch.init()`` has set up
logging before uvicorn starts; uvicorn is told not to install its own log
handlers (``log_config=None``), so its lines come out as the same JSON.
"""

from __future__ import annotations

import argparse
import importlib
import logging

import uvicorn

from .config import DEFAULT_PORTS, SERVICES

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshwatch-demo serve", description="Run one service of the demo mesh.")
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=None, help="port (default: the service's usual port)")
    args = parser.parse_args(argv)
    module = importlib.import_module(f"meshwatch.demo.services.{args.service}")
    if not logging.getLogger().handlers:  # no telemetry library configured logging: plain lines
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per call repeats the client span
    uvicorn.run(
        module.app,
        host=args.host,
        port=args.port or DEFAULT_PORTS[args.service],
        log_config=None,
        access_log=False,  # the server span and RED metrics already record every request
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
