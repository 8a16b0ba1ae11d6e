"""Where the backends are: a static list, or every address a DNS name resolves to.

Endpoints are ``host:port`` strings (IPv6 in brackets); a static hostname without a port
gets the OTLP/gRPC default 4317, as contrib's ``loadbalancingexporter`` does.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from pydantic import Field, model_validator

from ...duration import Duration
from ...model import StrictModel

__all__ = ["StaticResolver", "DnsResolver", "ResolverSettings", "endpoint", "resolve_dns"]

log = logging.getLogger("meshwatch.collector.exporter")

DEFAULT_PORT = 4317


def endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _with_port(hostname: str) -> str:
    text = hostname.strip()
    if text.startswith("["):  # [v6]:port or [v6]
        return text if "]:" in text else f"{text}:{DEFAULT_PORT}"
    if text.count(":") == 1:
        return text
    return endpoint(text, DEFAULT_PORT)


class StaticResolver(StrictModel):
    hostnames: list[str] = Field(..., min_length=1)

    def endpoints(self) -> list[str]:
        return sorted({_with_port(h) for h in self.hostnames})


class DnsResolver(StrictModel):
    hostname: str
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    #: How often the name is resolved again.
    interval: Duration = Field(5.0, gt=0)
    #: Accepted for compatibility: ``getaddrinfo`` has no timeout of its own (the resolver's is used).
    timeout: Duration = Field(1.0, gt=0)


class ResolverSettings(StrictModel):
    static: StaticResolver | None = None
    dns: DnsResolver | None = None

    @model_validator(mode="after")
    def _one(self) -> ResolverSettings:
        if (self.static is None) == (self.dns is None):
            raise ValueError(
                "set exactly one resolver: static (hostnames) or dns (hostname); k8s and aws_cloud_map are not here"
            )
        return self


def resolve_dns(hostname: str, port: int) -> list[str]:
    """Every TCP address of ``hostname``, as sorted endpoints; ``OSError`` when it does not resolve."""
    infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    return sorted({endpoint(str(info[4][0]), port) for info in infos})


#: What a DNS resolver calls; a test may pass another (a name whose addresses it controls).
Lookup = Callable[[str, int], list[str]]
