"""``meshwatch-dashboards console``: the dashboards, metrics, traces, logs and alerts in a browser.

A small stdlib HTTP server on loopback serves one page (static/) and JSON endpoints that ask the
real backends (backends.py). The dashboards are drawn from the committed dashboards/json/*.json.
"""

from .backends import DEFAULT_BACKENDS, ConsoleConfig
from .server import ConsoleServer, make_server

__all__ = ["DEFAULT_BACKENDS", "ConsoleConfig", "ConsoleServer", "make_server"]
