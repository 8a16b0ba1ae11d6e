"""A plain WSGI callable (no framework): what meshwatch's server-level spans are for.

Paths: ``/hello/<name>`` 200 (a list body), ``/stream`` 200 from a generator that calls
``start_response`` only when first iterated, ``/fail`` a 500 it answers itself, ``/raise``
an unhandled exception (the server answers 500), anything else 404. ``/inner`` answers
with the trace id the app sees as current.
"""

import logging

from opentelemetry import trace

log = logging.getLogger("bare_wsgi")


def _stream(start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield from (b"one ", b"two ", b"three")


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/hello/"):
        log.info("said hello", extra={"visitor": path[7:]})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello " + path[7:].encode()]
    if path == "/stream":
        return _stream(start_response)
    if path == "/inner":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [format(trace.get_current_span().get_span_context().trace_id, "032x").encode()]
    if path == "/fail":
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"failed"]
    if path == "/raise":
        raise RuntimeError("bare wsgi exploded")
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]
