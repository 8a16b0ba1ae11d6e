"""The console's HTTP server: static files and the JSON routes, on stdlib ``http.server``.

server = make_server(ConsoleConfig(prometheus=...), host="127.0.0.1", port=0)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(server.url)
"""

from __future__ import annotations

import json
import mimetypes
import re
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from . import backends as api
from .backends import BackendError, ConsoleConfig

__all__ = ["ConsoleServer", "STATIC_DIR", "explore_location", "make_server"]

STATIC_DIR = Path(__file__).parent / "static"

Params = dict[str, str]
Route = Callable[[re.Match[str], Params, ConsoleConfig], api.Answer]

#: (path pattern, handler): the first whose pattern matches the whole path answers.
ROUTES: list[tuple[re.Pattern[str], Route]] = [
    (re.compile(r"/api/dashboards"), lambda m, p, c: api.dashboards()),
    (re.compile(r"/api/dashboards/([\w-]+)/variables"), lambda m, p, c: api.dashboard_variables(m[1], p, c)),
    (re.compile(r"/api/dashboards/([\w-]+)/panels"), lambda m, p, c: api.dashboard_panels(m[1], p, c)),
    (re.compile(r"/api/prom/query"), lambda m, p, c: api.prom_query(p, c)),
    (re.compile(r"/api/prom/query_range"), lambda m, p, c: api.prom_query_range(p, c)),
    (re.compile(r"/api/traces/services"), lambda m, p, c: api.traces_services(c)),
    (re.compile(r"/api/traces/operations"), lambda m, p, c: api.traces_operations(p, c)),
    (re.compile(r"/api/traces/search"), lambda m, p, c: api.traces_search(p, c)),
    (re.compile(r"/api/traces/([^/]+)"), lambda m, p, c: api.trace(m[1], c)),
    (re.compile(r"/api/logs/search"), lambda m, p, c: api.logs_search(p, c)),
    (re.compile(r"/api/alerts"), lambda m, p, c: api.alerts(c)),
    (re.compile(r"/api/config"), lambda m, p, c: (200, _public_config(c))),
]


def _public_config(config: ConsoleConfig) -> dict[str, str]:
    return {
        "prometheus": config.prometheus,
        "jaeger": config.jaeger,
        "elasticsearch": config.elasticsearch,
        "alertmanager": config.alertmanager,
    }


def explore_location(query: str) -> str:
    """Where Prometheus' ``/graph?g0.expr=…`` link (an alert's generatorURL) opens: the Explore tab.

    Prometheus writes its links under ``--web.external-url``; the demo points that at the
    console, which has no ``/graph`` page of its own, so the expression moves to the page's hash.
    """
    expr = dict(parse_qsl(query)).get("g0.expr", "")
    return f"/#explore?q={quote(expr, safe='')}" if expr else "/#explore"


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], config: ConsoleConfig, *, quiet: bool = False) -> None:
        super().__init__(address, _Handler)
        self.config = config
        self.quiet = quiet

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(
    config: ConsoleConfig, host: str = "127.0.0.1", port: int = 3001, *, quiet: bool = False
) -> ConsoleServer:
    return ConsoleServer((host, port), config, quiet=quiet)


class _Handler(BaseHTTPRequestHandler):
    server: ConsoleServer
    server_version = "meshwatch-console"

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        if path.startswith("/api/"):
            self._api(path, dict(parse_qsl(parts.query, keep_blank_values=True)))
        elif path == "/graph":
            self._redirect(explore_location(parts.query))
        else:
            self._static(path)

    def _api(self, path: str, params: Params) -> None:
        for pattern, route in ROUTES:
            match = pattern.fullmatch(path)
            if match:
                try:
                    status, body = route(match, params, self.server.config)
                except BackendError as exc:
                    status, body = exc.status, {"error": str(exc)}
                except Exception as exc:  # a bug here must reach the page as a message, not a hang
                    status, body = 500, {"error": f"{type(exc).__name__}: {exc}"}
                self._send(status, json.dumps(body).encode(), "application/json")
                return
        self._send(404, json.dumps({"error": f"no API route {path}"}).encode(), "application/json")

    def _static(self, path: str) -> None:
        name = "index.html" if path == "/" else path.lstrip("/")
        file = (STATIC_DIR / name).resolve()
        if not file.is_relative_to(STATIC_DIR.resolve()) or not file.is_file():
            # Client-side routes (#…) never reach here; anything else unknown is a 404.
            self._send(404, b"not found\n", "text/plain; charset=utf-8")
            return
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        self._send(200, file.read_bytes(), kind)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            sys.stderr.write(f"console: {self.address_string()} {format % args}\n")
