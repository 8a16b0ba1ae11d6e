"""Test service "tasks": a Celery app with a Redis broker, no OTel code."""

import logging
import os

from celery import Celery

app = Celery("tasks", broker=os.environ["BROKER_URL"])
app.conf.broker_connection_retry_on_startup = True
log = logging.getLogger("tasks")


@app.task
def add(x: int, y: int) -> int:
    log.warning("adding", extra={"x": x, "y": y})
    return x + y


@app.task
def fail(item: int) -> None:
    raise ValueError(f"task failed for item {item}")
