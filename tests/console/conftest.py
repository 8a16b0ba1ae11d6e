"""The console served in-process on a free loopback port, pointed at the session's real backends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from meshwatch.dashboards.console import ConsoleConfig, ConsoleServer, make_server


@pytest.fixture(scope="module")
def console(prometheus: Any, jaeger: Any, elasticsearch: Any, alertmanager: Any) -> Iterator[ConsoleServer]:
    config = ConsoleConfig(
        prometheus=prometheus.url, jaeger=jaeger.url, elasticsearch=elasticsearch.url, alertmanager=alertmanager.url
    )
    server = make_server(config, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
