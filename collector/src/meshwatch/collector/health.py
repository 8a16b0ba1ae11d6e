"""The self-telemetry endpoint: ``GET /metrics`` (Prometheus text) and ``GET /healthz``.

A plain threading HTTP server is enough here: Prometheus scrapes it every few
seconds, and it must keep answering while the data path is saturated.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .telemetry import Telemetry

__all__ = ["HealthServer"]

log = logging.getLogger("meshwatch.collector.health")


class _Server(ThreadingHTTPServer):
    """socketserver prints a traceback to stderr for every failed request, outside the JSON
    log: a client that gave up (a probe's timeout while the machine is saturated) is not an
    error, and anything else goes to the log as one line."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            return
        log.warning("self-telemetry request from %s failed: %r", client_address[0], exc)


class HealthServer:
    def __init__(self, address: str, telemetry: Telemetry, health: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        host, _, port = address.rpartition(":")
        self.telemetry = telemetry
        self.health = health
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/metrics":
                    body = generate_latest(outer.telemetry.registry)
                    self._reply(200, CONTENT_TYPE_LATEST, body)
                elif path in ("/healthz", "/health", "/"):
                    ok, detail = outer.health()
                    body = json.dumps({"status": "ok" if ok else "failing", **detail}).encode()
                    self._reply(200 if ok else 503, "application/json", body)
                else:
                    self._reply(404, "text/plain", b"not found: try /metrics or /healthz\n")

            def _reply(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        try:
            self._server = _Server((host.strip("[]") or "127.0.0.1", int(port)), Handler)
        except OSError as exc:
            raise OSError(f"cannot serve self-telemetry on {address}: {exc.strerror or exc}") from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="self-telemetry", daemon=True)
        self.started = time.time()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop that never ran
            self._server.shutdown()
        self._server.server_close()
