"""The on-call webhook: records every notification Alertmanager sends and shows them.

Alertmanager's webhook receivers POST here (``/webhook/<receiver>``, e.g. ``/webhook/oncall``,
``/webhook/ticket``, ``/webhook/heartbeat``); people and tests read back:

* ``GET /api/notifications[?receiver=oncall]`` — every notification, oldest first, as received;
* ``GET /api/alerts[?receiver=oncall&status=firing]`` — the latest state of each alert
  (by receiver and fingerprint), so "is X firing now / has it resolved" is one request;
* ``GET /`` — a minimal HTML page of the same, each alert linking to its runbook; ``GET /healthz`` — counts;
* ``GET /runbooks/<AlertName>`` (or ``…/<AlertName>.md``) — that alert's runbook from docs/runbooks,
  rendered to HTML, and ``GET /runbooks/`` the index: what an alert's ``runbook_url`` opens when the
  rules are built with ``--runbook-base-url http://<this server>/runbooks/`` (the demo does).

Standard library only (``http.server``), so the demo needs nothing more to run it, and it
binds 127.0.0.1 unless told otherwise. Bad requests get a 4xx with the reason and are
counted; the server keeps running. History is bounded; evicted notifications are counted.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .runbooks import Runbooks, default_runbooks_dir

__all__ = ["Inbox", "OncallServer", "main"]

MAX_BODY_BYTES = 1 << 20  # Alertmanager's payloads for one group are far smaller
DEFAULT_HISTORY = 10_000


@dataclass
class Inbox:
    """Notifications received, bounded; thread-safe."""

    history: int = DEFAULT_HISTORY
    _items: deque[dict[str, Any]] = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    received: int = 0
    evicted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._items = deque(maxlen=self.history)

    def add(self, receiver: str, payload: dict[str, Any]) -> dict[str, Any]:
        record = {
            "received_at": time.time(),
            "receiver": receiver,
            "status": payload.get("status"),
            "alertmanager_receiver": payload.get("receiver"),
            "group_labels": payload.get("groupLabels", {}),
            "alerts": [
                {
                    "status": a.get("status"),
                    "labels": a.get("labels", {}),
                    "annotations": a.get("annotations", {}),
                    "startsAt": a.get("startsAt"),
                    "endsAt": a.get("endsAt"),
                    "fingerprint": a.get("fingerprint"),
                }
                for a in payload["alerts"]
            ],
        }
        with self._lock:
            if len(self._items) == self._items.maxlen:
                self.evicted += 1
            self._items.append(record)
            self.received += 1
        return record

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def notifications(self, receiver: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._items)
        return [n for n in items if receiver is None or n["receiver"] == receiver]

    def alerts(self, receiver: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Latest state per (receiver, alert), in the order alerts were first seen."""
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for note in self.notifications(receiver):
            for alert in note["alerts"]:
                key = (note["receiver"], alert["fingerprint"] or json.dumps(alert["labels"], sort_keys=True))
                latest[key] = {**alert, "receiver": note["receiver"], "notified_at": note["received_at"]}
        return [a for a in latest.values() if status is None or a["status"] == status]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "received": self.received,
                "kept": len(self._items),
                "evicted": self.evicted,
                "rejected": dict(self.rejected),
            }


def _validate(payload: Any) -> str | None:
    """Why ``payload`` is not an Alertmanager webhook message, or None if it is."""
    if not isinstance(payload, dict):
        return "the body must be a JSON object (Alertmanager webhook payload)"
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        return "the payload has no 'alerts' list"
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict) or not isinstance(alert.get("labels", {}), dict):
            return f"alerts[{i}] is not an object with a 'labels' object"
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the inbox is the record
        if self.server.verbose:
            super().log_message(format, *args)

    # --- helpers ---

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data, indent=1).encode(), "application/json")

    def _error(self, status: HTTPStatus, reason: str, message: str) -> None:
        self.server.inbox.reject(reason)
        self._json(status, {"error": message})

    # --- routes ---

    def do_POST(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        parts = path.split("/")
        if len(parts) != 3 or parts[1] != "webhook" or not parts[2]:
            self._error(HTTPStatus.NOT_FOUND, "not_found", "POST alerts to /webhook/<receiver>")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", f"body over {MAX_BODY_BYTES} bytes")
            self.close_connection = True
            return
        raw = self.rfile.read(length)
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, "malformed", f"body is not JSON: {exc}")
            return
        problem = _validate(payload)
        if problem:
            self._error(HTTPStatus.BAD_REQUEST, "malformed", problem)
            return
        record = self.server.inbox.add(parts[2], payload)
        self._json(HTTPStatus.OK, {"recorded": len(record["alerts"])})

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        inbox = self.server.inbox
        if url.path == "/api/notifications":
            self._json(HTTPStatus.OK, inbox.notifications(query.get("receiver")))
        elif url.path == "/api/alerts":
            self._json(HTTPStatus.OK, inbox.alerts(query.get("receiver"), query.get("status")))
        elif url.path == "/healthz":
            self._json(HTTPStatus.OK, {"status": "ok", **inbox.stats()})
        elif url.path == "/":
            self._send(HTTPStatus.OK, _page(inbox).encode(), "text/html; charset=utf-8")
        elif url.path in ("/runbooks", "/runbooks/") or url.path.startswith("/runbooks/"):
            self._runbook(unquote(url.path.removeprefix("/runbooks").strip("/")))
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "see / for the page, /api/alerts and /api/notifications"})

    def _runbook(self, name: str) -> None:
        runbooks = self.server.runbooks
        page = runbooks.page(name)
        if page is not None:
            self._send(HTTPStatus.OK, page.html.encode(), "text/html; charset=utf-8")
            return
        if runbooks.directory is None:
            message = "no runbooks folder: start meshwatch-oncall with --runbooks DIR (or MESHWATCH_RUNBOOKS)"
        else:
            message = f"no runbook named {name!r}; the runbooks are: {', '.join(runbooks.names()) or '(none)'}"
        self._send(HTTPStatus.NOT_FOUND, (message + "\n").encode(), "text/plain; charset=utf-8")


def _runbook_link(url: object) -> str:
    """A link to the alert's runbook when it is a web address (a repository path is shown as text)."""
    text = str(url or "")
    if text.startswith(("http://", "https://", "/")):
        return f"<a href='{html.escape(text, quote=True)}'>runbook</a>"
    return html.escape(text)


def _page(inbox: Inbox) -> str:
    """A minimal page: current alert states first, then the notification log. Everything is escaped."""
    rows = []
    for alert in reversed(inbox.alerts()):
        labels = alert["labels"]
        rows.append(
            "<tr class='{cls}'><td>{status}</td><td>{receiver}</td><td>{name}</td><td>{sev}</td><td>{svc}</td>"
            "<td>{summary}</td><td>{since}</td><td>{runbook}</td></tr>".format(
                cls=html.escape(str(alert["status"])),
                status=html.escape(str(alert["status"])),
                receiver=html.escape(alert["receiver"]),
                name=html.escape(str(labels.get("alertname", ""))),
                sev=html.escape(str(labels.get("severity", ""))),
                svc=html.escape(str(labels.get("service", ""))),
                summary=html.escape(str(alert["annotations"].get("summary", ""))),
                since=html.escape(str(alert["startsAt"])),
                runbook=_runbook_link(alert["annotations"].get("runbook_url")),
            )
        )
    stats = inbox.stats()
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>meshwatch on-call</title>"
        "<meta http-equiv='refresh' content='5'>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}"
        ".firing{background:#fdd}.resolved{background:#dfd}</style></head><body>"
        "<h1>meshwatch on-call</h1>"
        f"<p>{stats['received']} notifications received, {stats['evicted']} evicted from history, "
        f"{sum(stats['rejected'].values())} requests rejected.</p>"
        "<table><tr><th>status</th><th>receiver</th><th>alert</th><th>severity</th><th>service</th>"
        "<th>summary</th><th>since</th><th>runbook</th></tr>" + "".join(rows) + "</table>"
        "<p>JSON: <a href='/api/alerts'>/api/alerts</a>, <a href='/api/notifications'>/api/notifications</a>;"
        " <a href='/runbooks/'>runbooks</a></p>"
        "</body></html>"
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], inbox: Inbox, runbooks: Runbooks, verbose: bool) -> None:
        self.inbox = inbox
        self.runbooks = runbooks
        self.verbose = verbose
        super().__init__(address, _Handler)


class OncallServer:
    """The webhook server, runnable in a background thread (tests, the demo) or in the foreground (CLI)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9095,
        *,
        history: int = DEFAULT_HISTORY,
        runbooks: Path | None = None,
    ) -> None:
        """``runbooks``: the folder of ``<AlertName>.md`` pages to serve (default: docs/runbooks of the checkout)."""
        self.inbox = Inbox(history)
        self.runbooks = Runbooks(runbooks if runbooks is not None else default_runbooks_dir())
        self._server = _Server((host, port), self.inbox, self.runbooks, verbose=False)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def webhook_url(self, receiver: str) -> str:
        return f"{self.url}/webhook/{receiver}"

    @property
    def runbook_base_url(self) -> str:
        """What to pass as ``runbook_base_url`` so alerts link to this server's runbook pages."""
        return f"{self.url}/runbooks/"

    def start(self) -> OncallServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="oncall-webhook", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.verbose = True
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> OncallServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="meshwatch-oncall",
        description="Record and show the alerts Alertmanager sends (webhook receiver at /webhook/<receiver>).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9095, help="port (default 9095)")
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY, help="notifications kept (default 10000)")
    parser.add_argument(
        "--runbooks",
        type=Path,
        default=None,
        help="folder of <AlertName>.md runbooks served at /runbooks/ (default: $MESHWATCH_RUNBOOKS, else the "
        "checkout's docs/runbooks)",
    )
    args = parser.parse_args(argv)
    if args.runbooks is not None and not args.runbooks.is_dir():
        print(f"meshwatch-oncall: --runbooks {args.runbooks} is not a folder", file=sys.stderr)
        return 2
    try:
        server = OncallServer(args.host, args.port, history=args.history, runbooks=args.runbooks)
    except OSError as exc:
        print(f"meshwatch-oncall: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    where = server.runbooks.directory or "none (use --runbooks)"
    print(
        f"meshwatch-oncall: listening on {server.url} (POST /webhook/<receiver>; GET /, /api/alerts, "
        f"/runbooks/<AlertName>; runbooks from {where})",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
