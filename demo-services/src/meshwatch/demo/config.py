"""Where each demo service finds its peers and backends: environment variables with local defaults.

The platform (``meshwatch-demo up``) and docker-compose set these; run by hand, a
service talks to the usual loopback ports, so ``uvicorn meshwatch.demo.services.orders:app``
works beside the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["SERVICES", "DEFAULT_PORTS", "Settings", "env_name"]

#: The mesh, in start order (callees before callers), with the port each uses when free.
SERVICES = ("fraud", "inventory", "payments", "notifications", "orders", "gateway")
DEFAULT_PORTS = {
    "gateway": 8080,
    "orders": 8081,
    "inventory": 8082,
    "payments": 8083,
    "fraud": 8084,
    "notifications": 8085,
}


def env_name(service: str) -> str:
    """The variable that holds a service's base URL: ``DEMO_ORDERS_URL``."""
    return f"DEMO_{service.upper()}_URL"


@dataclass(frozen=True)
class Settings:
    """One service's view of the world, read once at start."""

    service: str
    database_url: str
    redis_url: str
    nats_url: str

    @classmethod
    def from_env(cls, service: str) -> Settings:
        return cls(
            service=service,
            # SQLite in the working folder by default; PostgreSQL with e.g.
            # DEMO_DATABASE_URL=postgresql+psycopg://user:pass@host/db
            database_url=os.environ.get("DEMO_DATABASE_URL", f"sqlite:///./demo-{service}.db"),
            redis_url=os.environ.get("DEMO_REDIS_URL", "redis://127.0.0.1:6379/0"),
            nats_url=os.environ.get("DEMO_NATS_URL", "nats://127.0.0.1:4222"),
        )

    @staticmethod
    def peer_url(service: str) -> str:
        return os.environ.get(env_name(service), f"http://127.0.0.1:{DEFAULT_PORTS[service]}")
