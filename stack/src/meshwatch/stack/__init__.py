"""Real backends for meshwatch's tests, demo and benchmarks, on a machine without Docker.

``install`` builds or downloads each backend once into a per-machine cache;
``Stack`` starts any subset of them on loopback ports and stops them by PID.
"""

from .installer import COMPONENTS, BackendMissing, binary, install
from .runner import Server, Stack, StackError, free_port, wait_http

__all__ = [
    "COMPONENTS",
    "BackendMissing",
    "Server",
    "Stack",
    "StackError",
    "binary",
    "free_port",
    "install",
    "wait_http",
]
