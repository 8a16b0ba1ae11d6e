"""notifications: consumes ``orders.placed`` from NATS JetStream and "sends" a confirmation.

The asynchronous hop: its spans are children of the order's producer span,
carried in the message headers, so Jaeger shows them in the order's trace and
the service graph shows ``orders → notifications`` through the broker. Faults
apply to message handling too: an injected error naks the message for redelivery.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from .._app import create_app
from ..config import Settings
from ..deps import Cache
from ..messaging import ORDER_PLACED, Broker

SERVICE = "notifications"
settings = Settings.from_env(SERVICE)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await broker.connect()
    broker.start_consumer(ORDER_PLACED, "notifications", send_confirmation)
    yield
    await broker.close()
    await cache.close()


app, faults, log = create_app(SERVICE, dependencies=("redis", "nats"), lifespan=lifespan)
broker = Broker(settings.nats_url, SERVICE, faults)
cache = Cache(settings.redis_url, faults)


async def send_confirmation(order: dict[str, Any]) -> None:
    await faults.apply()
    # Once per order even when a message is redelivered.
    first = await cache.client.set(f"notifications:sent:{order['id']}", "1", nx=True, ex=3600)
    if first:
        await asyncio.sleep(random.uniform(0.005, 0.02))  # noqa: S311  # the mail provider's API
        await cache.client.incr("notifications:sent")
        log.info("confirmation for order %s sent", order["id"])


@app.get("/stats")
async def stats() -> dict[str, Any]:
    return {"processed": broker.processed, "failed": broker.failed}
