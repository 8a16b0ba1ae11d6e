"""A FastAPI app with no OTel code, for the collector-unreachable and end-to-end tests."""

import logging

from fastapi import FastAPI

log = logging.getLogger("plain")
app = FastAPI()


@app.get("/hello/{name}")
async def hello(name: str) -> dict:
    log.info("said hello", extra={"visitor": name})
    return {"hello": name}
