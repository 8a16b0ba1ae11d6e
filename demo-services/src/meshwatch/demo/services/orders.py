"""orders: places an order: reserve stock, take payment, store it, announce it on the broker.

The heart of the mesh: synchronous calls to inventory and payments, a SQL write,
and an ``orders.placed`` event through NATS JetStream that notifications consumes
later, in the same trace. ``demo.orders.placed`` is the business metric the demo
adds by hand (two lines with the OpenTelemetry metrics API): orders by outcome.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from opentelemetry import metrics
from pydantic import BaseModel, Field
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, select
from starlette.concurrency import run_in_threadpool

from .._app import create_app
from ..config import Settings
from ..deps import Peer, UpstreamError, make_engine
from ..messaging import ORDER_PLACED, Broker

SERVICE = "orders"

metadata = MetaData()
orders_table = Table(
    "orders",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("sku", String(32), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("payment_id", String(64), nullable=False),
    Column("email", String(200), nullable=False),
    Column("created_ms", BigInteger, nullable=False, index=True),
)

# The business metric: one counter, labelled by outcome (placed, declined, out_of_stock, failed).
orders_placed = metrics.get_meter("meshwatch.demo.orders").create_counter(
    "demo.orders.placed", unit="{order}", description="orders by outcome"
)


class OrderRequest(BaseModel):
    sku: str = Field(min_length=1, max_length=32)
    quantity: int = Field(default=1, ge=1, le=100)
    card: str = Field(min_length=4, max_length=32)
    email: str = Field(default="shopper@example.com", max_length=200)


settings = Settings.from_env(SERVICE)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await run_in_threadpool(metadata.create_all, engine)
    await broker.connect()
    yield
    await broker.close()
    engine.dispose()


app, faults, log = create_app(SERVICE, dependencies=("inventory", "payments", "db", "nats"), lifespan=lifespan)
engine = make_engine(settings, faults)
broker = Broker(settings.nats_url, SERVICE, faults)


def _peer(request: Request, name: str) -> Peer:
    return Peer(name, request.app.state.http, faults)


@app.post("/orders", status_code=201)
async def place_order(order: OrderRequest, request: Request) -> dict[str, Any]:
    inventory, payments = _peer(request, "inventory"), _peer(request, "payments")
    try:
        item = await inventory.call("POST", "/reserve", json={"sku": order.sku, "quantity": order.quantity})
    except UpstreamError as exc:
        orders_placed.add(1, {"outcome": "out_of_stock" if exc.status == 409 else "failed"})
        raise
    amount = int(item["price_cents"]) * order.quantity
    order_id = str(uuid.uuid4())
    try:
        payment = await payments.call(
            "POST", "/charge", json={"order_id": order_id, "amount_cents": amount, "card": order.card}
        )
    except Exception as exc:
        declined = isinstance(exc, UpstreamError) and exc.status == 402
        orders_placed.add(1, {"outcome": "declined" if declined else "failed"})
        try:
            await inventory.call("POST", "/release", json={"sku": order.sku, "quantity": order.quantity})
        except Exception:
            log.warning("could not release %d x %s for order %s", order.quantity, order.sku, order_id, exc_info=True)
        raise
    record = {
        "id": order_id,
        "sku": order.sku,
        "quantity": order.quantity,
        "amount_cents": amount,
        "payment_id": payment["payment_id"],
        "email": order.email,
        "created_ms": int(time.time() * 1000),
    }

    def store() -> None:
        with engine.begin() as conn:
            conn.execute(orders_table.insert(), record)

    await run_in_threadpool(store)
    await broker.publish(ORDER_PLACED, record)
    orders_placed.add(1, {"outcome": "placed"})
    log.info("order %s placed: %d x %s for %d cents", order_id, order.quantity, order.sku, amount)
    return record


@app.get("/orders/{order_id}")
async def get_order(order_id: str) -> dict[str, Any]:
    def load() -> dict[str, Any] | None:
        with engine.connect() as conn:
            row = conn.execute(select(orders_table).where(orders_table.c.id == order_id)).first()
            return dict(row._mapping) if row else None

    found = await run_in_threadpool(load)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no order {order_id}")
    return found


@app.get("/orders")
async def recent_orders(limit: int = 10) -> list[dict[str, Any]]:
    limit = max(1, min(limit, 100))

    def load() -> list[dict[str, Any]]:
        with engine.connect() as conn:
            query = select(orders_table).order_by(orders_table.c.created_ms.desc()).limit(limit)
            return [dict(r._mapping) for r in conn.execute(query)]

    return await run_in_threadpool(load)
