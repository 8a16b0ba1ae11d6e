"""Test service "inventory" (Flask under gunicorn), Jaeger propagation only (OTEL_PROPAGATORS=jaeger)."""

import logging
import os

from flask import Flask, request

log = logging.getLogger("inventory")
app = Flask(__name__)


@app.get("/stock/<int:item>")
def stock(item: int) -> dict:
    log.info("stock checked", extra={"item": item})
    return {"item": item, "pid": os.getpid(), "headers": sorted(k.lower() for k, _ in request.headers)}
