"""Fault tests, counting what the collector acknowledged against what arrived in Jaeger.

* the collector killed with SIGKILL under load and restarted loses nothing it acknowledged;
* Jaeger stopped for 20 s under load and restarted receives everything afterwards
  (the 60 s outage is ``bench/collector/outage.py``, with its numbers in docs/benchmarks.md);
* duplicates (records being sent at the crash, sent again) stay under 1%;
* fdatasync failing with EIO inside the collector refuses with a retry hint, and once it
  works again nothing acknowledged is lost, across a SIGKILL too.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshwatch.collector.otlp_sink import otlp_sink
from meshwatch.stack.runner import Server, Stack, wait_http
from meshwatch.stack.testing import eventually, start_or_fail

from ._helpers import (
    SINK_BATCH_ITEMS,
    SINK_CONSUMERS,
    SpanLoad,
    check_all_arrived,
    count_at_sink,
    jaeger_exporter,
    jaeger_span_count,
    random_trace_ids,
    sink_exporter,
    span_request,
)

pytestmark = pytest.mark.integration

SPANS = 100  # per request (one trace per request)


def _config(jaeger: Server, **queue) -> dict:
    exporter = jaeger_exporter(
        jaeger,
        sending_queue={"fsync": "interval", "num_consumers": 2, **queue},
        retry_on_failure={"initial_interval": 0.2, "max_interval": 2},
        batch={"max_items": 1000},
    )
    return {
        "exporters": {"otlp/jaeger": exporter},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger"]}}},
    }


def test_sigkill_under_load_loses_nothing_acknowledged(collector_factory, jaeger) -> None:
    """Counted twice: in Jaeger (the real backend) and at a sink that keeps every copy (duplicates)."""
    with otlp_sink() as sink:
        config = _config(jaeger)
        config["exporters"]["otlphttp/sink"] = sink_exporter(sink)
        config["service"]["pipelines"]["traces"]["exporters"].append("otlphttp/sink")
        _sigkill_under_load(collector_factory(config), jaeger, sink)


def _sigkill_under_load(collector, jaeger, sink) -> None:
    load = SpanLoad(collector.grpc_endpoint, spans=SPANS).start()
    eventually(lambda: len(load.acked) >= 150, timeout=60, what="load flowing")
    collector.kill()  # SIGKILL: no flush, no goodbye
    killed_at = len(load.acked)
    time.sleep(1.0)
    collector.restart()
    eventually(lambda: len(load.acked) >= killed_at + 150, timeout=60, what="load flowing after the restart")
    load.stop()
    result = check_all_arrived(jaeger, load.acked, SPANS)
    at_sink = count_at_sink(sink, load.acked, SPANS)
    share = at_sink["duplicate_spans"] / max(1, load.acked_spans)
    print(f"\nSIGKILL: Jaeger {result}; sink {at_sink} ({share:.2%} duplicates); refused while down: {load.refused}")
    assert result["missing_spans"] == 0, result
    assert at_sink["missing_spans"] == 0, at_sink
    # At-least-once: only what was in flight at the kill (sent, not yet acknowledged) is sent again.
    assert at_sink["duplicate_spans"] <= SINK_CONSUMERS * SINK_BATCH_ITEMS, at_sink
    assert collector.metric("meshwatch_queue_size_items") == 0


def test_the_sink_counts_a_planted_duplicate(collector_factory) -> None:
    """The positive control of the duplicate count above: a request sent twice is counted twice."""
    with otlp_sink() as sink:
        collector = collector_factory(
            {
                "exporters": {"otlphttp/sink": sink_exporter(sink)},
                "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlphttp/sink"]}}},
            }
        )
        trace_ids = random_trace_ids(3)
        body = span_request(trace_ids, spans_per_trace=2)
        for _ in range(2):  # the same spans, twice
            request = urllib.request.Request(
                f"{collector.http_url}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
        assert count_at_sink(sink, trace_ids, 2) == {"traces": 3, "missing_spans": 0, "duplicate_spans": 6}


class RestartableJaeger:
    """A Jaeger of this test module's own (the session's is shared), stoppable and restartable on its ports."""

    def __init__(self, state_dir: Path) -> None:
        self.stack = Stack(state_dir)
        self.server = start_or_fail(self.stack, "jaeger", storage="memory")

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        """Run the same binary with the same config file (same ports) again; its memory store starts empty."""
        server = self.server
        with open(server.log, "ab") as log:
            proc = subprocess.Popen(
                server.argv, stdout=log, stderr=subprocess.STDOUT, cwd=server.workdir, start_new_session=True
            )
        self.server = Server(server.name, proc.pid, server.ports, server.urls, server.workdir, server.log, server.argv)
        self.stack.servers["jaeger"] = self.server
        wait_http(f"{self.server.url}/api/services", timeout=60, is_alive=self.server.alive, what="jaeger restart")

    def down(self) -> None:
        self.stack.servers["jaeger"] = self.server
        self.stack.down()


@pytest.fixture(scope="module")
def own_jaeger():
    with tempfile.TemporaryDirectory(prefix="meshwatch-own-jaeger-") as state:
        Path(state).chmod(0o755)
        jaeger = RestartableJaeger(Path(state))
        try:
            yield jaeger
        finally:
            jaeger.down()


def test_jaeger_outage_under_load_then_everything_arrives(collector_factory, own_jaeger) -> None:
    collector = collector_factory(_config(own_jaeger.server))
    load = SpanLoad(collector.grpc_endpoint, spans=SPANS).start()
    eventually(lambda: len(load.acked) >= 100, timeout=60, what="load flowing")
    # Quiesce so the count is exact: what was sent before the outage lives in the Jaeger we are
    # about to stop (its store is in memory), so check it there first.
    load.pause()
    before = list(load.acked)
    eventually(lambda: collector.metric("meshwatch_queue_size_items") == 0, timeout=60, what="queue drained")
    assert check_all_arrived(own_jaeger.server, before, SPANS, timeout=60)["missing_spans"] == 0

    own_jaeger.stop()
    load.resume()
    outage_start = time.monotonic()
    eventually(lambda: collector.metric("meshwatch_exporter_backend_up") == 0, timeout=30, what="backend_up = 0")
    eventually(lambda: collector.metric("meshwatch_queue_size_items") > 0, timeout=30, what="queue growing")
    time.sleep(max(0.0, 20 - (time.monotonic() - outage_start)))  # the outage lasts 20 s
    queued = collector.metric("meshwatch_queue_size_items")
    age = collector.metric("meshwatch_queue_oldest_item_age_seconds")
    own_jaeger.start()
    time.sleep(3)  # a few seconds of load after the restart too
    load.stop()
    during = load.acked[len(before) :]
    assert queued > 0 and age >= 10, (queued, age)
    eventually(lambda: collector.metric("meshwatch_queue_size_items") == 0, timeout=120, what="queue drained")
    result = check_all_arrived(own_jaeger.server, during, SPANS)
    print(f"\noutage: {result}, queued at the end of the outage: {queued:.0f} spans, oldest {age:.0f}s")
    assert result["missing_spans"] == 0, result
    assert result["duplicate_spans"] < 0.01 * len(during) * SPANS, result
    assert collector.metric("meshwatch_exporter_backend_up") == 1
    assert collector.metric("meshwatch_exporter_dropped_items_total") == 0
    assert collector.metric("meshwatch_exporter_failed_items_total") > 0


def test_full_queue_during_an_outage_refuses_and_loses_nothing_acknowledged(collector_factory, own_jaeger) -> None:
    """A queue too small for the outage: the sender is refused (RESOURCE_EXHAUSTED), never silently dropped."""
    own_jaeger.stop()
    collector = collector_factory(_config(own_jaeger.server, queue_size=20_000))
    load = SpanLoad(collector.grpc_endpoint, spans=SPANS).start()
    eventually(lambda: load.refused.get("RESOURCE_EXHAUSTED", 0) >= 20, timeout=60, what="push-back")
    own_jaeger.start()
    eventually(lambda: collector.metric("meshwatch_queue_size_items") < 20_000, timeout=60, what="queue draining")
    time.sleep(2)
    load.stop()
    eventually(lambda: collector.metric("meshwatch_queue_size_items") == 0, timeout=120, what="queue drained")
    result = check_all_arrived(own_jaeger.server, load.acked, SPANS)
    accepted = collector.metric("meshwatch_receiver_accepted_items_total")
    refused = collector.metric("meshwatch_receiver_refused_items_total", reason="queue_full")
    print(f"\nfull queue: {result}; accepted {accepted:.0f}, refused {refused:.0f}, sender saw {load.refused}")
    assert result["missing_spans"] == 0, result
    assert accepted == load.acked_spans  # every acknowledgement was counted...
    assert refused == load.refused["RESOURCE_EXHAUSTED"] * SPANS  # ...and every refusal, with its reason
    assert collector.metric("meshwatch_exporter_dropped_items_total") == 0


def test_sigterm_stops_within_its_budget_and_the_queue_survives_for_the_next_start(collector_factory, jaeger) -> None:
    """Backend unreachable: a graceful stop does not wait for it; the queued spans are sent after a restart."""
    from meshwatch.collector.testing import free_port

    config = _config(jaeger)
    config["exporters"]["otlp/jaeger"]["endpoint"] = f"127.0.0.1:{free_port()}"  # nothing there yet
    config["service"]["shutdown_timeout"] = "5s"
    collector = collector_factory(config)
    load = SpanLoad(collector.grpc_endpoint, spans=SPANS).start()
    eventually(lambda: len(load.acked) >= 20, timeout=60, what="spans queued")
    load.stop()
    assert collector.metric("meshwatch_queue_size_items") == len(load.acked) * SPANS
    started = time.monotonic()
    assert collector.stop(timeout=30) == 0  # exit code 0: a clean stop
    assert time.monotonic() - started < 15
    assert "stay queued on disk for the next start" in collector.log_path.read_text()

    collector.config["exporters"]["otlp/jaeger"]["endpoint"] = jaeger.urls["otlp_grpc"]  # the backend is back
    collector.restart()
    result = check_all_arrived(jaeger, load.acked, SPANS, timeout=60)
    assert result["missing_spans"] == 0 and result["duplicate_spans"] == 0, result


_EIO_HOOK = """
import errno, os

_real_fdatasync, _trigger = os.fdatasync, os.environ["MESHWATCH_TEST_EIO_WHILE"]


def _fdatasync(fd):
    if os.path.exists(_trigger):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    _real_fdatasync(fd)


os.fdatasync = _fdatasync
"""


def test_fsync_errors_refuse_with_a_retry_hint_and_lose_nothing_acknowledged(
    collector_factory, jaeger, tmp_path: Path
) -> None:
    """EIO from ``fdatasync`` in the real collector (a ``sitecustomize`` hook, on while a file exists)."""
    hook = tmp_path / "eio-hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(_EIO_HOOK))
    trigger = tmp_path / "eio-now"
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
        "MESHWATCH_TEST_EIO_WHILE": str(trigger),
    }
    collector = collector_factory(_config(jaeger), env=env)
    load = SpanLoad(collector.grpc_endpoint, spans=SPANS).start()
    eventually(lambda: len(load.acked) >= 100, timeout=60, what="load flowing")

    trigger.touch()  # the disk starts failing every fdatasync
    eventually(lambda: load.refused.get("RESOURCE_EXHAUSTED", 0) >= 20, timeout=30, what="refusals while fsync fails")
    http = urllib.request.Request(
        f"{collector.http_url}/v1/traces",
        data=span_request(random_trace_ids(1)),
        headers={"Content-Type": "application/x-protobuf"},
    )
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(http, timeout=10)
    assert answer.value.code == 429 and float(answer.value.headers["Retry-After"]) >= 1
    refused = collector.metric("meshwatch_receiver_refused_items_total", reason="queue_io_error")
    assert refused >= 20 * SPANS

    trigger.unlink()  # the disk works again: accepted again, without a restart
    acked_at = len(load.acked)
    eventually(lambda: len(load.acked) >= acked_at + 100, timeout=60, what="accepted again")
    collector.kill()  # and what was acknowledged survives a crash
    collector.restart()
    time.sleep(2)
    load.stop()
    result = check_all_arrived(jaeger, load.acked, SPANS)
    log = collector.log_path.read_text()
    print(f"\nEIO: {result}; sender saw {load.refused}; refused {refused:.0f} spans as queue_io_error")
    assert result["missing_spans"] == 0, result
    assert result["duplicate_spans"] < 0.01 * load.acked_spans, result
    assert "fdatasync of segment-" in log and "Input/output error" in log
    assert log.count("fdatasync of segment-") < 10, "every failed write was logged"


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 4 MiB tmpfs for the queue: a disk that really fills (ENOSPC from the kernel, not a fake)."""
    mount_point = Path(tempfile.mkdtemp(prefix="meshwatch-small-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}): needs root with CAP_SYS_ADMIN")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


def test_a_full_disk_refuses_then_recovers_without_a_restart(collector_factory, own_jaeger, small_disk) -> None:
    """The queue's file system fills during an outage: refusals with a retry hint, never a drop; once the
    backend is back and the queue drains, the same process accepts again and everything acknowledged arrives."""
    own_jaeger.stop()
    config = _config(own_jaeger.server, queue_size=10_000_000, directory=str(small_disk / "queue"))
    config["exporters"]["otlp/jaeger"]["sending_queue"]["max_bytes"] = 1 << 30  # the disk, not the limit, is full
    collector = collector_factory(config)
    load = SpanLoad(collector.grpc_endpoint, spans=SPANS).start()
    eventually(lambda: load.refused.get("RESOURCE_EXHAUSTED", 0) >= 20, timeout=90, what="push-back on a full disk")
    acked_while_full = len(load.acked)
    own_jaeger.start()
    try:
        eventually(lambda: len(load.acked) > acked_while_full + 50, timeout=90, what="accepting again, same process")
    except AssertionError as exc:
        usage = subprocess.run(["df", "-k", str(small_disk)], capture_output=True, text=True).stdout
        files = sorted(str(p.relative_to(small_disk)) for p in small_disk.rglob("*"))
        queued = collector.metric("meshwatch_queue_size_items")
        load.stop()
        raise AssertionError(
            f"{exc}\nqueued {queued}, {load.refused}; {usage}\n{files}\n{collector.log_tail(30)}"
        ) from None
    load.stop()
    eventually(lambda: collector.metric("meshwatch_queue_size_items") == 0, timeout=120, what="queue drained")
    result = check_all_arrived(own_jaeger.server, load.acked, SPANS)
    refused = collector.metric("meshwatch_receiver_refused_items_total", reason="queue_full")
    print(f"\nfull disk: {result}; sender saw {load.refused}, refused counted {refused:.0f}")
    assert result["missing_spans"] == 0, result
    assert refused == load.refused["RESOURCE_EXHAUSTED"] * SPANS
    assert collector.metric("meshwatch_exporter_dropped_items_total") == 0
    assert collector.metric("meshwatch_receiver_refused_items_total", reason="internal_error") == 0


def test_delivery_resumes_within_seconds_of_the_backend_returning(collector_factory, own_jaeger) -> None:
    """After a connection failure the exporter backs off (here: 10–30 s), but probes the backend about once a
    second, so a backend that comes back gets the queued data within seconds, not at the end of the backoff."""
    own_jaeger.stop()
    config = _config(own_jaeger.server)
    config["exporters"]["otlp/jaeger"]["retry_on_failure"] = {"initial_interval": 20, "max_interval": 30}
    collector = collector_factory(config)
    trace_id = random_trace_ids(1)[0]
    request = urllib.request.Request(
        f"{collector.http_url}/v1/traces",
        data=span_request([trace_id], spans_per_trace=1),
        headers={"Content-Type": "application/x-protobuf"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    eventually(lambda: collector.metric("meshwatch_exporter_backend_up") == 0, timeout=30, what="first send failed")
    own_jaeger.start()
    back = time.monotonic()
    eventually(lambda: jaeger_span_count(own_jaeger.server, trace_id) == 1, timeout=40, what="the queued span")
    took = time.monotonic() - back
    print(f"\ndelivered {took:.1f}s after the backend returned (backoff at least 10 s)")
    assert took < 6, f"delivered {took:.1f}s after the backend returned: waited for the backoff"
