"""Shared fixtures: the real backends come from the stack runner (see meshwatch.stack.testing)."""

from __future__ import annotations

import os

import pytest

# Every collector a test starts (directly, through the demo, a bench helper) is one process unless
# the test asks for workers: `--workers auto` (one per core) would change what the whole suite
# measures and kills (one PID, one queue folder). tests/collector/core/test_workers.py sets it.
os.environ.setdefault("MESHWATCH_COLLECTOR_WORKERS", "1")

pytest_plugins = ["meshwatch.stack.testing"]

#: Fixtures that start a real server or run a backend's own tool (installed by ``make backends``): a
#: test asking for one is an integration test, marked or not, so ``make unit`` (``-m "not integration
#: and not e2e"``) runs on a machine where no backend is installed.
_BACKEND_FIXTURES = frozenset(
    {
        "stack",
        "jaeger",
        "jaeger_es",
        "prometheus",
        "alertmanager",
        "elasticsearch",
        "redis_server",
        "nats_server",
        "kafka",
        "promtool",
        "amtool",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _BACKEND_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.integration)
