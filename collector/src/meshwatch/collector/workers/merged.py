"""One self-metrics and health endpoint (and one Prometheus exporter endpoint) for all workers.

Each worker serves its own ``/metrics`` and ``/healthz`` on a private port. The supervisor
answers on the configured address: ``/metrics`` is every worker's samples with a
``worker`` label added (so ``sum(rate(meshwatch_receiver_accepted_items_total[1m]))`` is the
collector's total, and ``by (worker)`` shows the spread) plus the supervisor's own
``meshwatch_collector_worker_*`` series; ``/healthz`` is 200 only when every worker is up
and healthy. Merged from the text format: exemplars of a Prometheus exporter are not carried.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["MergedServer", "merge_metrics", "worker_health"]

log = logging.getLogger("meshwatch.collector.workers")


def _fetch(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def merge_metrics(texts: dict[str, str], extra: Iterable[Metric] = ()) -> bytes:
    """Prometheus text of every ``{worker: exposition}`` with ``worker="<name>"`` on each sample.

    Families of the same name are merged into one (the text format allows a family once).
    """
    families: dict[str, Metric] = {}
    for worker, text in texts.items():
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                labels = {**sample.labels, "worker": worker}
                merged.samples.append(Sample(sample.name, labels, sample.value, sample.timestamp))
    for family in extra:
        families.setdefault(family.name, family)

    class _Collected:
        def collect(self) -> Iterable[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected())  # type: ignore[arg-type]
    return generate_latest(registry)


def worker_health(url: str) -> tuple[bool, dict[str, Any]]:
    """A worker's own ``/healthz`` answer: (healthy, its JSON), or (False, the error)."""
    try:
        status, body = _fetch(url, timeout=3.0)
        return status == 200, json.loads(body or b"{}")
    except (OSError, ValueError) as exc:
        return False, {"status": "unreachable", "error": str(exc) or type(exc).__name__}


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class MergedServer:
    """Serves ``/metrics`` merged from ``sources()`` and, if given, ``/healthz`` from ``health()``."""

    def __init__(
        self,
        address: str,
        sources: Callable[[str], dict[str, str]],
        health: Callable[[], tuple[bool, dict[str, Any]]] | None,
        extra: Callable[[], Iterable[Metric]] = list,
    ) -> None:
        host, _, port = address.rpartition(":")
        outer = self
        self.sources, self.health, self.extra = sources, health, extra

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if outer.health is not None and path in ("/healthz", "/health", "/"):
                    ok, detail = outer.health()
                    body = json.dumps({"status": "ok" if ok else "failing", **detail}).encode()
                    self._reply(200 if ok else 503, "application/json", body)
                    return
                if outer.health is not None and path != "/metrics":
                    self._reply(404, "text/plain", b"not found: try /metrics or /healthz\n")
                    return
                try:
                    body = merge_metrics(outer.sources(self.path), outer.extra())
                except ValueError as exc:  # a worker answered something that is not the text format
                    self._reply(502, "text/plain", f"cannot merge the workers' metrics: {exc}\n".encode())
                    return
                self._reply(200, CONTENT_TYPE_LATEST, body)

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
            raise OSError(f"cannot serve on {address}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="workers-merged", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def scrape_all(urls: dict[str, str], timeout: float = 5.0) -> dict[str, str]:
    """``{worker: text}`` of every worker that answers (one that does not is left out, not fatal)."""

    def one(item: tuple[str, str]) -> tuple[str, str | None]:
        worker, url = item
        try:
            status, body = _fetch(url, timeout)
        except OSError:
            return worker, None
        return worker, body.decode() if status == 200 else None

    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        return {worker: text for worker, text in pool.map(one, urls.items()) if text is not None}
