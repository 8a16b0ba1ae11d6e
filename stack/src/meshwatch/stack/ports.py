"""Loopback ports for servers that tests, the stack and the demo start.

A port that ``bind(0)`` picks is in the kernel's ephemeral range, where the local ports of
outgoing connections come from too: between the pick and the server's own bind (seconds for a
JVM, a moment for a collector) any outgoing connection can take it, and the server fails with
``Address already in use`` (CI saw it on a collector's OTLP/HTTP port). Ports handed out here
come from below that range, in turn from a random start, so two picks in one process never
collide either.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["ephemeral_port_range", "free_port"]

#: Where Linux says which local ports outgoing connections take.
_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: Listening ports are handed out from here up to the start of the ephemeral range.
LISTEN_FLOOR = 20000


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default if it cannot be read)."""
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


class ListenPorts:
    """Hands out loopback ports below the ephemeral range, each free when handed out."""

    def __init__(self) -> None:
        low, _ = ephemeral_port_range()
        self.ports = range(LISTEN_FLOOR, low) if low - LISTEN_FLOOR >= 1000 else range(0)
        self.next = random.randrange(len(self.ports)) if self.ports else 0  # noqa: S311 - a start, not a secret

    def take(self) -> int:
        for _ in range(min(len(self.ports), 200)):
            port = self.ports[self.next]
            self.next = (self.next + 1) % len(self.ports)
            if bindable(port):
                return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no room below the range
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


def bindable(port: int) -> bool:
    """Whether a server could listen on ``127.0.0.1:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


_ports = ListenPorts()


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if a server could listen on it now, else a free port below the ephemeral range."""
    if preferred and bindable(preferred):
        return preferred
    return _ports.take()
