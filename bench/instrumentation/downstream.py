"""The downstream of ``GET /work``: a bare ASGI app (never instrumented), so every variant calls the same thing."""

from __future__ import annotations

from typing import Any

BODY = b'{"ok":true}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
