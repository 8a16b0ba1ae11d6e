"""A plain ASGI callable (no framework): what meshwatch's server-level spans are for.

``app`` (ASGI 3), ``make_app`` (for ``uvicorn --factory``) and ``App2`` (an ASGI 2 class).
Paths: ``/hello/<name>`` 200, ``/fail`` a 500 it answers itself, ``/raise`` an unhandled
exception (the server answers 500), anything else 404. ``/inner`` answers with the trace id
the app sees as current, so a test can tell the span is current inside the app.
"""

import logging

from opentelemetry import trace

log = logging.getLogger("bare_asgi")


async def _respond(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path.startswith("/hello/"):
        log.info("said hello", extra={"visitor": path[7:]})
        await _respond(send, 200, b"hello " + path[7:].encode())
    elif path == "/inner":
        await _respond(send, 200, format(trace.get_current_span().get_span_context().trace_id, "032x").encode())
    elif path == "/fail":
        await _respond(send, 500, b"failed")
    elif path == "/raise":
        raise RuntimeError("bare asgi exploded")
    else:
        await _respond(send, 404, b"not found")


def make_app():
    return app


class App2:
    """The same application in the ASGI 2 shape (a class instantiated per connection scope)."""

    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        await app(self.scope, receive, send)
