"""The benchmarked FastAPI service: ``GET /hello`` and ``GET /work`` (one downstream call, one log line).

It contains no instrumentation code: the benchmark runs the same module bare,
under ``opentelemetry-instrument`` and under ``meshwatch-run``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

import httpx
from fastapi import FastAPI

# Uninstrumented, this prints the line as text; under a launcher that already put a
# handler on the root logger this is a no-op and the launcher's handler writes it.
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s %(message)s")

# httpcore imports sniffio on every request; when sniffio is not installed that is a failed
# import (a dozen filesystem look-ups) per call, which would dominate /work for every variant.
if importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

DOWNSTREAM = os.environ.get("BENCH_DOWNSTREAM", "http://127.0.0.1:8081/")
log = logging.getLogger("bench.service")
app = FastAPI()
client: httpx.AsyncClient | None = None


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/work")
async def work() -> dict[str, int]:
    global client  # noqa: PLW0603 - one pooled client, created in the worker's event loop
    if client is None:
        client = httpx.AsyncClient(timeout=5.0)
    response = await client.get(DOWNSTREAM)
    log.info("downstream answered", extra={"status": response.status_code})
    return {"downstream": response.status_code}
