"""gateway: the shop's public API, the entry point of every trace.

Routes the storefront's calls to inventory (browsing) and orders (checkout and
order lookup). It answers with the downstream status: a declined payment is a
402 here too, an unreachable dependency a 503.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel, Field

from .._app import create_app
from ..deps import Peer

SERVICE = "gateway"


class Checkout(BaseModel):
    sku: str = Field(min_length=1, max_length=32)
    quantity: int = Field(default=1, ge=1, le=100)
    card: str = Field(min_length=4, max_length=32)
    email: str = Field(default="shopper@example.com", max_length=200)


app, faults, log = create_app(SERVICE, dependencies=("inventory", "orders"))


def _peer(request: Request, name: str) -> Peer:
    return Peer(name, request.app.state.http, faults)


@app.get("/")
async def index() -> dict[str, Any]:
    return {
        "service": "meshwatch demo shop",
        "routes": ["GET /api/products", "GET /api/products/{sku}", "POST /api/checkout", "GET /api/orders/{id}"],
    }


@app.get("/api/products")
async def products(request: Request) -> Any:
    return await _peer(request, "inventory").call("GET", "/products")


@app.get("/api/products/{sku}")
async def product(sku: str, request: Request) -> Any:
    return await _peer(request, "inventory").call("GET", f"/products/{sku}")


@app.post("/api/checkout", status_code=201)
async def checkout(body: Checkout, request: Request) -> Any:
    return await _peer(request, "orders").call("POST", "/orders", json=body.model_dump())


@app.get("/api/orders/{order_id}")
async def order(order_id: str, request: Request) -> Any:
    return await _peer(request, "orders").call("GET", f"/orders/{order_id}")
