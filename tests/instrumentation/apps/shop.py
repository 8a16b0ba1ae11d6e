"""Test service "shop" (FastAPI): calls inventory (Jaeger-format propagation) and pricing (W3C). No OTel code."""

import logging
import os

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

log = logging.getLogger("shop.orders")
app = FastAPI()


@app.get("/orders/{order_id}")
async def order(order_id: int) -> dict:
    log.info("order looked up", extra={"order_id": order_id, "card_number": "4111111111111111"})
    async with httpx.AsyncClient(timeout=10) as client:
        stock = await client.get(f"{os.environ['INVENTORY_URL']}/stock/{order_id}", params={"token": "s3cr3t"})
        price = await client.get(f"{os.environ['PRICING_URL']}/price/{order_id}")
    return {"order": order_id, "stock": stock.json(), "price": price.json()}


@app.get("/fail")
async def fail() -> JSONResponse:
    try:
        {}["missing"]
    except KeyError:
        log.exception("order failed", extra={"reason": "lookup"})
    return JSONResponse({"error": "failed"}, status_code=500)
