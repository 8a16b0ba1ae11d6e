"""A light OTLP/HTTP traces sink for benchmarks: counts every (trace id, span id) it is sent, copies too.

Jaeger's query API merges identical spans, so duplicates cannot be counted there; the test
sink (``meshwatch.collector.otlp_sink``) keeps a full record of every span, too heavy at
tens of thousands of spans a second beside the load. This one reads two fields per span
and can be stopped and started again on the same port, to be part of an outage.
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class SpanCounter:
    """``url`` stays the same across ``stop()``/``start()``; ``copies`` maps (trace id, span id) to copies seen."""

    def __init__(self, port: int = 0) -> None:
        self.copies: Counter[tuple[bytes, bytes]] = Counter()
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        counter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = ExportTraceServiceRequest.FromString(body)
                ids = [
                    (s.trace_id, s.span_id) for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans
                ]
                with counter.lock:
                    counter.copies.update(ids)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, name="span-counter", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def count(self, trace_ids: set[bytes], spans_per_trace: int) -> dict[str, int]:
        """Missing and duplicate spans over ``trace_ids``: a span seen twice counts one duplicate."""
        with self.lock:
            per_trace: Counter[bytes] = Counter()
            copies = 0
            for (trace_id, _span_id), n in self.copies.items():
                if trace_id in trace_ids:
                    per_trace[trace_id] += 1
                    copies += n
        distinct = sum(per_trace.values())
        missing = sum(max(0, spans_per_trace - per_trace[t]) for t in trace_ids)
        return {"distinct": distinct, "copies": copies, "missing": missing, "duplicates": copies - distinct}
