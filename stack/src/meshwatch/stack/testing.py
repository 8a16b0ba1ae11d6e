"""pytest fixtures that give a test the real backends, started once per session.

Enable with ``pytest_plugins = ["meshwatch.stack.testing"]``. Each fixture starts
only its own server, the first time a test asks for it, on free loopback ports;
all are stopped at the end of the session. A backend that is not installed fails
the test with the command that installs it; nothing is skipped.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .installer import BackendMissing
from .runner import Server, Stack, StackError

__all__ = ["eventually", "start_or_fail"]

T = TypeVar("T")

#: Scrape and rule-evaluation interval of the test Prometheus: short, so tests are quick.
TEST_SCRAPE_INTERVAL = "1s"


def eventually(check: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.25, what: str = "") -> T:
    """Call ``check`` until it returns something truthy; fail with the last result or error.

    Backends are eventually consistent (Prometheus scrapes every interval, Jaeger and
    Elasticsearch refresh), so tests wait for the outcome rather than sleep.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except AssertionError:
            raise
        except Exception as exc:  # a backend may refuse until it is ready
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true after {timeout:.0f}s: {what or check!r}; last result: {last!r}")
        time.sleep(interval)


def start_or_fail(stack: Stack, name: str, **options: Any) -> Server:
    try:
        return stack.start(name, **options)
    except BackendMissing as exc:
        pytest.fail(f"{name} is not installed: {exc}", pytrace=False)
    except StackError as exc:
        pytest.fail(f"{name} did not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The session's stack; its state folder is removed afterwards unless a test failed to stop."""
    state_dir = Path(tempfile.mkdtemp(prefix="meshwatch-test-stack-"))
    state_dir.chmod(0o755)  # the Elasticsearch user needs to enter it
    running = Stack(state_dir)
    try:
        yield running
    finally:
        running.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def jaeger(stack: Stack) -> Server:
    """Jaeger v2 all-in-one: ``urls['otlp_grpc']``, ``urls['otlp_http']``, ``url`` (query API)."""
    return start_or_fail(stack, "jaeger")


@pytest.fixture(scope="session")
def alertmanager(stack: Stack) -> Server:
    return start_or_fail(stack, "alertmanager")


@pytest.fixture(scope="session")
def prometheus(stack: Stack, alertmanager: Server) -> Server:
    """Prometheus scraping every second, sending alerts to the session's Alertmanager."""
    return start_or_fail(
        stack,
        "prometheus",
        scrape_interval=TEST_SCRAPE_INTERVAL,
        alertmanager=f"127.0.0.1:{alertmanager.ports['http']}",
    )


@pytest.fixture(scope="session")
def elasticsearch(stack: Stack) -> Server:
    """One small Elasticsearch (512 MB heap) shared by the whole session."""
    return start_or_fail(stack, "elasticsearch", heap="512m")


@pytest.fixture(scope="session")
def redis_server(stack: Stack) -> Server:
    """Redis (Debian package) for the demo's cache: ``urls['redis']``."""
    return start_or_fail(stack, "redis")


@pytest.fixture(scope="session")
def nats_server(stack: Stack) -> Server:
    """NATS with JetStream (Debian package), the demo's broker: ``urls['nats']``."""
    return start_or_fail(stack, "nats")
