"""A demo service's dependencies: peers over HTTP, the Redis cache, the SQL database.

Each client consults the service's :class:`~meshwatch.demo.faults.FaultState`, so a
dependency marked down fails the way a real outage does: HTTP and Redis calls go
to a loopback port nobody listens on and get *connection refused* (the
instrumented client span records the error), the database refuses with
:class:`DependencyDown`. None of this code touches telemetry: the OpenTelemetry
instrumentors that ``meshwatch.init()`` enables see httpx, redis and SQLAlchemy.
"""

from __future__ import annotations

from typing import Any

import httpx
import redis.asyncio as aioredis
import sqlalchemy
from sqlalchemy import Engine, event

from .config import Settings
from .faults import FaultState

__all__ = ["DependencyDown", "UpstreamError", "Peer", "Cache", "make_engine", "DEAD_ADDRESS"]

#: Loopback port 9 (discard): nothing listens there, so a connection is refused at once.
DEAD_ADDRESS = "127.0.0.1:9"


class DependencyDown(RuntimeError):
    """A dependency is unreachable (injected); the service answers 503 naming it."""

    def __init__(self, dependency: str) -> None:
        super().__init__(f"{dependency} is down")
        self.dependency = dependency


class UpstreamError(RuntimeError):
    """A peer answered with an error status; carried up so the caller answers in kind."""

    def __init__(self, peer: str, status: int, body: Any) -> None:
        reason = body.get("error") or body.get("detail") if isinstance(body, dict) else None
        super().__init__(f"{peer} answered {status}: {reason or body}")
        self.peer = peer
        self.status = status
        self.body = body


class Peer:
    """Another service of the mesh, called over HTTP with one shared connection pool."""

    def __init__(self, name: str, client: httpx.AsyncClient, faults: FaultState, base_url: str | None = None) -> None:
        self.name = name
        self.base_url = (base_url or Settings.peer_url(name)).rstrip("/")
        self._client = client
        self._faults = faults

    async def call(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        """JSON in, JSON out; a 4xx/5xx becomes :class:`UpstreamError`, a refused connection ``httpx.ConnectError``."""
        base = f"http://{DEAD_ADDRESS}" if self._faults.is_down(self.name) else self.base_url
        response = await self._client.request(method, f"{base}{path}", headers=headers, **kwargs)
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text[:200]
            raise UpstreamError(self.name, response.status_code, body)
        return response.json()


class Cache:
    """The Redis cache; marked down, it points at a dead port so commands fail like an outage."""

    def __init__(self, url: str, faults: FaultState) -> None:
        options = {"socket_connect_timeout": 0.5, "socket_timeout": 1.0, "decode_responses": True}
        self._live = aioredis.Redis.from_url(url, **options)
        self._dead = aioredis.Redis.from_url(f"redis://{DEAD_ADDRESS}/0", retry_on_timeout=False, **options)
        self._faults = faults

    @property
    def client(self) -> aioredis.Redis:
        return self._dead if self._faults.is_down("redis") else self._live

    async def close(self) -> None:
        await self._live.aclose()
        await self._dead.aclose()


def make_engine(settings: Settings, faults: FaultState) -> Engine:
    """A SQLAlchemy engine for ``DEMO_DATABASE_URL`` that refuses to connect while ``db`` is down."""
    url = settings.database_url
    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        options["connect_args"] = {"check_same_thread": False, "timeout": 5}
    # Looked up at call time, after meshwatch.init(): the SQLAlchemy instrumentor wraps it.
    engine = sqlalchemy.create_engine(url, **options)

    @event.listens_for(engine, "engine_connect")
    def _refuse_when_down(connection: Any) -> None:
        if faults.is_down("db"):
            raise DependencyDown("db")

    return engine
