"""Test service "pricing" (FastAPI), W3C tracecontext only (the default)."""

import logging

from fastapi import FastAPI

log = logging.getLogger("pricing")
app = FastAPI()


@app.get("/price/{item}")
async def price(item: int) -> dict:
    log.info("price computed", extra={"item": item})
    return {"item": item, "price": item * 3}


@app.get("/boom")
async def boom() -> dict:
    raise RuntimeError("pricing exploded")  # unhandled: uvicorn logs "Exception in ASGI application"
