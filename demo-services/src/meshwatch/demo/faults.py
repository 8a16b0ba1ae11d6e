"""Fault injection at run time: error rate, added latency and dependency-down, per service.

Each demo service holds one :class:`FaultState` in memory and exposes it on a small
admin endpoint (``GET/PUT/DELETE /admin/faults``), so ``meshwatch-demo fault payments
--error-rate 0.2`` changes a running service without a restart. Faults act where a
real failure would: a dependency of every route delays or fails requests (so RED metrics and
error logs show it), and :meth:`FaultState.is_down` makes the service's own
dependency clients fail to connect (see :mod:`meshwatch.demo.deps`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

__all__ = ["Faults", "FaultState", "FaultUpdate", "InjectedFault", "admin_router", "fault_dependency"]

#: Paths the faults never touch: the admin API itself and the health check.
EXEMPT_PREFIXES = ("/admin", "/healthz")


class InjectedFault(RuntimeError):
    """Raised where an injected error replaces real work (e.g. a message handler)."""


@dataclass(frozen=True)
class Faults:
    """One service's faults: a value object, replaced whole on every change."""

    error_rate: float = 0.0
    latency_ms: int = 0
    down: frozenset[str] = field(default_factory=frozenset)

    @property
    def active(self) -> bool:
        return self.error_rate > 0 or self.latency_ms > 0 or bool(self.down)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["down"] = sorted(self.down)
        return data


class FaultUpdate(BaseModel):
    """A partial change: fields left out keep their value."""

    error_rate: float | None = Field(default=None, ge=0.0, le=1.0, description="share of requests that fail, 0..1")
    latency_ms: int | None = Field(default=None, ge=0, le=60_000, description="added to every request")
    down: list[str] | None = Field(default=None, description="dependencies made unreachable (replaces the list)")


class FaultState:
    """The live faults of one service and the dependencies it may take down."""

    def __init__(self, service: str, dependencies: tuple[str, ...] = (), rng: random.Random | None = None) -> None:
        self.service = service
        self.dependencies = dependencies
        self.faults = Faults()
        self._rng = rng or random.Random()  # noqa: S311 (a fault draw, not a secret)

    def update(self, change: FaultUpdate) -> Faults:
        """Apply a partial change; an unknown dependency name is an error that names the valid ones."""
        down = self.faults.down
        if change.down is not None:
            unknown = sorted(set(change.down) - set(self.dependencies))
            if unknown:
                valid = ", ".join(self.dependencies) or "none"
                raise ValueError(f"{self.service} has no dependency {', '.join(unknown)}; it depends on: {valid}")
            down = frozenset(change.down)
        self.faults = Faults(
            error_rate=self.faults.error_rate if change.error_rate is None else change.error_rate,
            latency_ms=self.faults.latency_ms if change.latency_ms is None else change.latency_ms,
            down=down,
        )
        return self.faults

    def clear(self) -> Faults:
        self.faults = Faults()
        return self.faults

    def is_down(self, dependency: str) -> bool:
        return dependency in self.faults.down

    def should_fail(self) -> bool:
        """Draw once: True for about ``error_rate`` of the calls."""
        rate = self.faults.error_rate
        return rate > 0 and self._rng.random() < rate

    async def delay(self) -> None:
        if self.faults.latency_ms > 0:
            await asyncio.sleep(self.faults.latency_ms / 1000)

    async def apply(self) -> None:
        """Delay, then raise :class:`InjectedFault` for ``error_rate`` of the calls (message handlers use this)."""
        await self.delay()
        if self.should_fail():
            raise InjectedFault(f"injected fault in {self.service} (error rate {self.faults.error_rate:g})")


def fault_dependency(state: FaultState, logger: logging.Logger) -> Callable[[Request], Awaitable[None]]:
    """A dependency of every route: adds the latency and fails ``error_rate`` of the requests with a 500.

    A dependency rather than a middleware so that it runs after routing: the failed
    request keeps its route in the server span's name and in the RED metrics'
    ``http_route`` label, as a real failure in the handler would.
    """

    async def inject_faults(request: Request) -> None:
        if request.url.path.startswith(EXEMPT_PREFIXES) or not state.faults.active:
            return
        await state.delay()
        if state.should_fail():
            # Logged inside the request's server span, so the log line carries its trace id.
            logger.error(
                "injected fault: failing %s %s",
                request.method,
                request.url.path,
                extra={"fault.error_rate": state.faults.error_rate},
            )
            raise InjectedFault(f"injected fault in {state.service} (error rate {state.faults.error_rate:g})")

    return inject_faults


def admin_router(state: FaultState) -> APIRouter:
    """``/admin/faults``: read, change (partially) and clear the service's faults."""
    router = APIRouter(prefix="/admin", tags=["admin"])

    @router.get("/faults")
    async def get_faults() -> dict[str, Any]:
        return {"service": state.service, "dependencies": list(state.dependencies), **state.faults.as_dict()}

    @router.put("/faults")
    async def put_faults(change: FaultUpdate) -> dict[str, Any]:
        try:
            state.update(change)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        return {"service": state.service, "dependencies": list(state.dependencies), **state.faults.as_dict()}

    @router.delete("/faults")
    async def clear_faults() -> dict[str, Any]:
        state.clear()
        return {"service": state.service, "dependencies": list(state.dependencies), **state.faults.as_dict()}

    return router
