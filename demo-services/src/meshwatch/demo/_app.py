"""What every demo service shares: telemetry in one line, health, fault injection, error mapping.

A service module builds its FastAPI app with :func:`create_app` and adds its own
routes. The one line of telemetry is ``meshwatch.init()`` here; everything else a
service shows in Jaeger, Prometheus and Elasticsearch comes from the
instrumentors it enables (FastAPI, httpx, SQLAlchemy, redis, logging).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import redis.exceptions
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

import meshwatch

from .deps import DependencyDown, UpstreamError
from .faults import FaultState, InjectedFault, admin_router, fault_dependency

__all__ = ["create_app", "init_telemetry", "validation_message"]

_initialised: set[str] = set()


def init_telemetry(service: str) -> None:
    """The one line of telemetry: traces, RED metrics and JSON logs, exported over OTLP."""
    if service not in _initialised:
        meshwatch.init(service_name=service)
        _initialised.add(service)


def create_app(
    service: str,
    *,
    dependencies: tuple[str, ...] = (),
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    telemetry: bool = True,
) -> tuple[FastAPI, FaultState, logging.Logger]:
    """A FastAPI app with ``/healthz``, ``/admin/faults`` and errors answered as JSON.

    ``telemetry=False`` is for a service run under ``meshwatch-run`` (zero code).
    """
    if telemetry:
        init_telemetry(service)
    logger = logging.getLogger(f"meshwatch.demo.{service}")
    faults = FaultState(service, dependencies)

    @asynccontextmanager
    async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0))
        try:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            await app.state.http.aclose()

    app = FastAPI(
        title=f"meshwatch demo: {service}",
        lifespan=_lifespan,
        dependencies=[Depends(fault_dependency(faults, logger))],
    )
    app.include_router(admin_router(faults))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": service, "faults": faults.faults.as_dict()}

    _add_error_handlers(app, service, logger)
    return app, faults, logger


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one line: ``error_rate: Input should be less than or equal to 1 (got 1.5)``."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")) or "body"
        got = "" if error.get("type") == "missing" else f" (got {error.get('input')!r})"
        parts.append(f"{where}: {error.get('msg', 'invalid')}{got}")
    return "; ".join(parts)


def _add_error_handlers(app: FastAPI, service: str, logger: logging.Logger) -> None:
    """Failures of dependencies become JSON answers that say which one, logged once with the stack trace."""

    def handler(
        status: Callable[[Exception], int], what: Callable[[Exception], str], level: int = logging.ERROR
    ) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handle(request: Request, exc: Exception) -> JSONResponse:
            code = status(exc)
            logger.log(
                level if code >= 500 else logging.WARNING,
                "%s %s failed: %s",
                request.method,
                request.url.path,
                what(exc),
                exc_info=exc if code >= 500 else None,
            )
            return JSONResponse({"error": what(exc), "service": service}, status_code=code)

        return handle

    app.add_exception_handler(
        UpstreamError,
        # A peer's client error (402 declined, 409 out of stock) is passed on; its 5xx becomes our 502.
        handler(lambda e: e.status if e.status < 500 else 502, str),  # type: ignore[attr-defined]
    )
    app.add_exception_handler(DependencyDown, handler(lambda e: 503, str))
    app.add_exception_handler(httpx.TransportError, handler(lambda e: 503, lambda e: f"peer unreachable: {e!r}"))
    app.add_exception_handler(
        redis.exceptions.ConnectionError, handler(lambda e: 503, lambda e: f"redis unreachable: {e}")
    )

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own answer is pydantic's error list as JSON; say it in one sentence instead.
        message = f"invalid request: {validation_message(exc.errors())}"  # type: ignore[attr-defined]
        return JSONResponse({"error": message, "service": service}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)

    async def injected(request: Request, exc: Exception) -> JSONResponse:
        # Already logged where it was injected (once, without a stack trace: it is no bug).
        return JSONResponse({"error": "injected fault", "service": service, "detail": str(exc)}, status_code=500)

    app.add_exception_handler(InjectedFault, injected)
