"""fraud: a "legacy" risk-scoring service that speaks only Jaeger-format trace propagation.

It has no telemetry code at all: the platform runs it under ``meshwatch-run`` with
``OTEL_PROPAGATORS=jaeger``, the zero-code way, as an old service would be
onboarded. It reads the caller's ``uber-trace-id`` header and so joins the trace.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from fastapi import Request
from pydantic import BaseModel, Field

from .._app import create_app

SERVICE = "fraud"


class ScoreRequest(BaseModel):
    amount_cents: int = Field(ge=0)
    card: str = Field(min_length=4, max_length=32)


app, faults, log = create_app(SERVICE, telemetry=False)


@app.post("/score")
async def score(body: ScoreRequest, request: Request) -> dict[str, Any]:
    """A stable pseudo-random score per card, a little higher for large amounts."""
    digest = hashlib.sha256(body.card.encode()).digest()
    base = digest[0] / 255 * 0.8
    score = min(1.0, base + (0.15 if body.amount_cents > 50_000 else 0.0))
    await asyncio.sleep(0.002 + digest[1] / 255 * 0.01)  # the model takes a few milliseconds
    return {"score": round(score, 3), "propagation": "jaeger" if "uber-trace-id" in request.headers else "other"}
