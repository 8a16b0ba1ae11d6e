"""pytest fixtures that give a test the real backends, started once per session.

Enable with ``pytest_plugins = ["meshwatch.stack.testing"]``. Each fixture starts
only its own server, the first time a test asks for it, on free loopback ports;
all are stopped at the end of the session. A backend that is not installed fails
the test with the command that installs it; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .installer import BackendMissing
from .runner import Server, Stack, StackError, free_port

__all__ = ["JaegerOnElasticsearch", "eventually", "start_or_fail"]

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


#: Where the session's ``jaeger`` keeps traces: ``memory`` unless this says ``elasticsearch``.
TEST_JAEGER_STORAGE_ENV = "MESHWATCH_TEST_JAEGER_STORAGE"


@pytest.fixture(scope="session")
def jaeger(stack: Stack, request: pytest.FixtureRequest) -> Server:
    """Jaeger v2 all-in-one: ``urls['otlp_grpc']``, ``urls['otlp_http']``, ``url`` (query API).

    In memory by default: most tests only need a trace to arrive, and an in-memory Jaeger
    starts in a second without a 512 MB Elasticsearch JVM beside it, and shows a span as soon as
    it is stored (on Elasticsearch: after a bulk flush and an index refresh, ≈1.2 s).
    ``MESHWATCH_TEST_JAEGER_STORAGE=elasticsearch`` runs the whole session on Elasticsearch;
    tests about durability ask for ``jaeger_es``.
    """
    storage = os.environ.get(TEST_JAEGER_STORAGE_ENV, "memory")
    if storage == "elasticsearch":
        request.getfixturevalue("elasticsearch")
    return start_or_fail(stack, "jaeger", storage=storage)


@dataclass
class JaegerOnElasticsearch:
    """A Jaeger that keeps its traces in the session's Elasticsearch, and can be restarted."""

    stack: Stack

    @property
    def server(self) -> Server:
        return self.stack.servers["jaeger"]

    def restart(self) -> Server:
        """SIGTERM it and start it again on the same ports (its traces stay in Elasticsearch)."""
        try:
            return self.stack.restart("jaeger")
        except StackError as exc:
            pytest.fail(f"jaeger did not restart: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def jaeger_es(elasticsearch: Server) -> Iterator[JaegerOnElasticsearch]:
    """Jaeger on the session's Elasticsearch (index prefix ``meshwatch-traces``), beside the in-memory
    ``jaeger``: its own state folder, so either can be restarted without the other."""
    state_dir = Path(tempfile.mkdtemp(prefix="meshwatch-test-jaeger-es-"))
    own = Stack(state_dir)
    try:
        start_or_fail(own, "jaeger", storage="elasticsearch", elasticsearch_url=elasticsearch.url)
        yield JaegerOnElasticsearch(own)
    finally:
        own.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def alertmanager(stack: Stack) -> Server:
    return start_or_fail(stack, "alertmanager")


@pytest.fixture(scope="session")
def prometheus(stack: Stack, alertmanager: Server) -> Server:
    """Prometheus scraping every second, sending alerts to the session's Alertmanager.

    Its links (alerts' generatorURL) point at a free loopback port kept for a console: the demo
    platform of tests/demo starts its console there, as ``make demo`` does on 3001.
    """
    return start_or_fail(
        stack,
        "prometheus",
        scrape_interval=TEST_SCRAPE_INTERVAL,
        alertmanager=f"127.0.0.1:{alertmanager.ports['http']}",
        external_url=f"http://127.0.0.1:{free_port()}",
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


@pytest.fixture(scope="session")
def kafka(stack: Stack) -> Server:
    """Apache Kafka 4.4 (KRaft, one combined node, 256 MB heap): ``urls['bootstrap']`` is ``host:port``.

    Topics made on first use have 4 partitions, so a consumer group of several members shares them.
    """
    return start_or_fail(stack, "kafka")


#: The fields the dashboards and the console read from a log record, as the collector's template maps them.
_LOG_TEST_MAPPING = {
    "@timestamp": {"type": "date_nanos"},
    "message": {"type": "text"},
    "log.level": {"type": "keyword"},
    "service.name": {"type": "keyword"},
    "trace.id": {"type": "keyword"},
}


def index_log_records(elasticsearch: Server, label: str, docs: list[dict[str, Any]]) -> str:
    """Put ``docs`` in ``meshwatch-logs-<label>-<date>``, searchable at once; returns the index name.

    An index of the test's own under the dashboards' ``meshwatch-logs-*`` pattern: creating the
    collector's daily index (``meshwatch-logs-YYYY.MM.DD``) here, before the collector installed
    its template, would give it this partial mapping and make Elasticsearch refuse the
    collector's records for the rest of the session.
    """
    import json
    import urllib.error
    import urllib.request
    from datetime import UTC, datetime

    index = f"meshwatch-logs-{label}-{datetime.now(UTC):%Y.%m.%d}"

    def call(method: str, path: str, body: bytes, content_type: str) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{elasticsearch.url}{path}", data=body, method=method, headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    mapping = json.dumps({"mappings": {"properties": _LOG_TEST_MAPPING}}).encode()
    status, answer = call("PUT", f"/{index}", mapping, "application/json")
    # 400 only for "it exists already" (an earlier run's index); any other refusal is a failure
    assert status == 200 or (
        status == 400 and answer.get("error", {}).get("type") == "resource_already_exists_exception"
    ), answer
    lines = []
    for doc in docs:
        lines += [json.dumps({"index": {"_index": index}}), json.dumps(doc)]
    status, answer = call("POST", "/_bulk?refresh=true", ("\n".join(lines) + "\n").encode(), "application/x-ndjson")
    assert status == 200 and not answer["errors"], answer
    return index
