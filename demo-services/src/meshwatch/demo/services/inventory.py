"""inventory: the product catalogue and stock, in SQL with a Redis read-through cache.

With Redis down it keeps answering from the database (slower, with a warning
log): the graceful degradation a cache outage should show on the dashboards.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.exceptions
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import Column, Integer, MetaData, String, Table, select, update
from starlette.concurrency import run_in_threadpool

from .._app import create_app
from ..config import Settings
from ..deps import Cache, make_engine

SERVICE = "inventory"
CACHE_TTL_S = 10
RESTOCK_BELOW, RESTOCK_TO = 10, 500

CATALOGUE = [
    ("SKU-1001", "Espresso beans 1 kg", 2490),
    ("SKU-1002", "Filter coffee 500 g", 1290),
    ("SKU-1003", "Ceramic mug", 990),
    ("SKU-1004", "Pour-over kettle", 4590),
    ("SKU-1005", "Burr grinder", 12900),
    ("SKU-1006", "Paper filters x100", 490),
    ("SKU-1007", "Milk frother", 3490),
    ("SKU-1008", "Travel tumbler", 2190),
    ("SKU-1009", "Tea sampler", 1890),
    ("SKU-1010", "Digital scale", 2990),
]

metadata = MetaData()
products = Table(
    "products",
    metadata,
    Column("sku", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("price_cents", Integer, nullable=False),
    Column("stock", Integer, nullable=False),
)


class Reservation(BaseModel):
    sku: str = Field(min_length=1, max_length=32)
    quantity: int = Field(ge=1, le=100)


settings = Settings.from_env(SERVICE)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await run_in_threadpool(_create_schema)
    yield
    await cache.close()
    engine.dispose()


app, faults, log = create_app(SERVICE, dependencies=("redis", "db"), lifespan=lifespan)
engine = make_engine(settings, faults)
cache = Cache(settings.redis_url, faults)


def _create_schema() -> None:
    metadata.create_all(engine)
    with engine.begin() as conn:
        known = set(conn.scalars(select(products.c.sku)))
        rows = [{"sku": s, "name": n, "price_cents": p, "stock": RESTOCK_TO} for s, n, p in CATALOGUE if s not in known]
        if rows:
            conn.execute(products.insert(), rows)


async def _cached(key: str, load: Any) -> Any:
    """Read through the cache; a cache outage costs latency, not answers."""
    try:
        hit = await cache.client.get(key)
        if hit is not None:
            return json.loads(hit)
    except redis.exceptions.RedisError as exc:
        log.warning("cache unavailable, reading %s from the database: %s", key, exc)
        return await run_in_threadpool(load)
    value = await run_in_threadpool(load)
    try:
        await cache.client.set(key, json.dumps(value), ex=CACHE_TTL_S)
    except redis.exceptions.RedisError as exc:
        log.warning("cache unavailable, not caching %s: %s", key, exc)
    return value


async def _invalidate(sku: str) -> None:
    try:
        await cache.client.delete("inventory:products", f"inventory:product:{sku}")
    except redis.exceptions.RedisError as exc:
        log.warning("cache unavailable, %s may be stale for %ss: %s", sku, CACHE_TTL_S, exc)


def _row(row: Any) -> dict[str, Any]:
    return {"sku": row.sku, "name": row.name, "price_cents": row.price_cents, "stock": row.stock}


@app.get("/products")
async def list_products() -> list[dict[str, Any]]:
    def load() -> list[dict[str, Any]]:
        with engine.connect() as conn:
            return [_row(r) for r in conn.execute(select(products).order_by(products.c.sku))]

    return await _cached("inventory:products", load)


@app.get("/products/{sku}")
async def get_product(sku: str) -> dict[str, Any]:
    def load() -> dict[str, Any] | None:
        with engine.connect() as conn:
            row = conn.execute(select(products).where(products.c.sku == sku)).first()
            return _row(row) if row else None

    product = await _cached(f"inventory:product:{sku}", load)
    if product is None:
        raise HTTPException(status_code=404, detail=f"no product {sku}")
    return product


@app.post("/reserve")
async def reserve(item: Reservation) -> dict[str, Any]:
    """Take ``quantity`` out of stock atomically; restock a product that runs low (the demo never sells out)."""

    def take() -> dict[str, Any] | None:
        with engine.begin() as conn:
            done = conn.execute(
                update(products)
                .where(products.c.sku == item.sku, products.c.stock >= item.quantity)
                .values(stock=products.c.stock - item.quantity)
            )
            row = conn.execute(select(products).where(products.c.sku == item.sku)).first()
            if row is None:
                return None
            if row.stock < RESTOCK_BELOW:
                conn.execute(update(products).where(products.c.sku == item.sku).values(stock=RESTOCK_TO))
            return {**_row(row), "reserved": done.rowcount == 1}

    result = await run_in_threadpool(take)
    if result is None:
        raise HTTPException(status_code=404, detail=f"no product {item.sku}")
    if not result.pop("reserved"):
        raise HTTPException(status_code=409, detail=f"{item.sku}: only {result['stock']} in stock")
    await _invalidate(item.sku)
    return {**result, "quantity": item.quantity}


@app.post("/release")
async def release(item: Reservation) -> dict[str, Any]:
    """Put a reservation back (the order was not paid)."""

    def give_back() -> int:
        with engine.begin() as conn:
            return conn.execute(
                update(products).where(products.c.sku == item.sku).values(stock=products.c.stock + item.quantity)
            ).rowcount

    if not await run_in_threadpool(give_back):
        raise HTTPException(status_code=404, detail=f"no product {item.sku}")
    await _invalidate(item.sku)
    return {"sku": item.sku, "released": item.quantity}
