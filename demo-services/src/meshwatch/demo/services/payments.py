"""payments: charges a card after asking the legacy fraud service for a score.

The call to fraud shows interop with a legacy service that only understands
Jaeger's ``uber-trace-id`` header: payments runs with
``OTEL_PROPAGATORS=tracecontext,baggage,jaeger`` (set by the platform), so its
outgoing calls carry both formats and fraud's spans join the same trace.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, Field

from .._app import create_app
from ..deps import Peer

SERVICE = "payments"
#: A test card that is always declined, as payment providers have.
DECLINED_CARD_SUFFIX = "0002"
FRAUD_THRESHOLD = 0.9


class Charge(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(ge=1, le=10_000_000)
    card: str = Field(min_length=4, max_length=32)


app, faults, log = create_app(SERVICE, dependencies=("fraud",))


@app.post("/charge")
async def charge(payment: Charge, request: Request) -> dict[str, Any]:
    fraud = Peer("fraud", request.app.state.http, faults)
    verdict = await fraud.call("POST", "/score", json={"amount_cents": payment.amount_cents, "card": payment.card})
    if payment.card.endswith(DECLINED_CARD_SUFFIX) or verdict["score"] >= FRAUD_THRESHOLD:
        # The card's last four digits only: a card number never reaches a log.
        log.warning("payment for order %s declined (card …%s)", payment.order_id, payment.card[-4:])
        raise HTTPException(status_code=402, detail="payment declined")
    return {"payment_id": f"pay_{uuid.uuid4().hex[:16]}", "status": "captured", "amount_cents": payment.amount_cents}
