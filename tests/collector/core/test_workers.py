"""``meshwatch-collector --workers N``: real worker processes behind one set of ports.

What a user relies on: requests sent to the usual ports reach every worker; one health
endpoint speaks for all; a worker killed with SIGKILL is started again and what it had
acknowledged is delivered (counted at a sink that keeps duplicates); SIGTERM stops them all.
"""

from __future__ import annotations

import os
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshwatch.collector.config import load_config
from meshwatch.collector.otlp_sink import otlp_sink
from meshwatch.collector.workers.merged import merge_metrics
from meshwatch.collector.workers.supervisor import resolve_workers
from meshwatch.stack.testing import eventually

from ._helpers import count_at_sink, random_trace_ids, span_request

TWO = {"MESHWATCH_COLLECTOR_WORKERS": "2"}


def _config(sink_url: str) -> dict[str, Any]:
    return {
        "exporters": {
            "otlphttp/sink": {
                "endpoint": sink_url,
                "sending_queue": {"fsync": "interval", "num_consumers": 2},
                "retry_on_failure": {"initial_interval": 0.2, "max_interval": 1, "max_elapsed_time": 0},
            }
        },
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlphttp/sink"]}}},
    }


def _post(url: str, body: bytes) -> int:
    """One request on a connection of its own (urllib does not reuse connections)."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def _send(collector: Any, requests: int, spans: int) -> list[bytes]:
    trace_ids = random_trace_ids(requests)
    for trace_id in trace_ids:
        assert _post(f"{collector.http_url}/v1/traces", span_request([trace_id], spans_per_trace=spans)) == 200
    return trace_ids


def _send_grpc(collector: Any, requests: int, spans: int) -> list[bytes]:
    """Each request on a gRPC channel of its own (HTTP/2 through the front, like many SDKs)."""
    import grpc

    trace_ids = random_trace_ids(requests)
    for trace_id in trace_ids:
        with grpc.insecure_channel(collector.grpc_endpoint) as channel:
            export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            export(span_request([trace_id], spans_per_trace=spans), timeout=30)
    return trace_ids


def _accepted_by_worker(collector: Any, transport: str | None = None) -> dict[str, float]:
    by_worker: dict[str, float] = {}
    for (name, labels), value in collector.metrics().items():
        if name == "meshwatch_receiver_accepted_items_total" and dict(labels)["transport"] in (
            transport or "grpc http"
        ):
            worker = dict(labels)["worker"]
            by_worker[worker] = by_worker.get(worker, 0.0) + value
    return by_worker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.integration
def test_requests_spread_over_two_workers_and_health_covers_both(collector_factory, tmp_path: Path) -> None:
    with otlp_sink() as sink:
        collector = collector_factory(_config(sink.url), env=TWO)
        status, health = collector.health()
        assert status == 200 and health["status"] == "ok"
        workers = health["workers"]
        assert set(workers) == {"0", "1"} and all(w["status"] == "ok" for w in workers.values())
        pids = {w["pid"] for w in workers.values()}
        assert len(pids) == 2 and collector.process.pid not in pids

        trace_ids = _send(collector, requests=20, spans=10) + _send_grpc(collector, requests=10, spans=10)
        assert count_at_sink(sink, trace_ids, 10) == {"traces": 30, "missing_spans": 0, "duplicate_spans": 0}
        # Round-robin per connection: each worker took about half of the spans of each transport.
        by_worker = _accepted_by_worker(collector, "http")
        assert sum(by_worker.values()) == 200
        assert by_worker["0"] >= 50 and by_worker["1"] >= 50, by_worker
        by_worker = _accepted_by_worker(collector, "grpc")
        assert sum(by_worker.values()) == 100
        assert by_worker["0"] >= 30 and by_worker["1"] >= 30, by_worker
        assert collector.metric("meshwatch_collector_workers") == 2
        for i in ("0", "1"):
            assert (collector.storage_dir / f"worker-{i}").is_dir()

        # One worker unhealthy makes the whole collector unhealthy.
        os.kill(workers["1"]["pid"], signal.SIGSTOP)
        try:

            def failing() -> dict[str, Any] | None:
                status, health = collector.health()
                return health if status == 503 else None

            health = eventually(failing, timeout=15, what="health failing while worker 1 is stopped")
            assert health["workers"]["1"]["status"] != "ok" and health["workers"]["0"]["status"] == "ok"
        finally:
            os.kill(workers["1"]["pid"], signal.SIGCONT)
        eventually(lambda: collector.health()[0] == 200, timeout=15, what="health back once worker 1 runs again")


@pytest.mark.integration
def test_a_killed_worker_is_restarted_and_its_queue_delivered(collector_factory) -> None:
    port = _free_port()  # the sink is not there yet: what the workers accept waits in their queues
    collector = collector_factory(_config(f"http://127.0.0.1:{port}"), env=TWO)
    trace_ids = _send(collector, requests=20, spans=50)
    by_worker = _accepted_by_worker(collector)
    assert by_worker["0"] > 0 and by_worker["1"] > 0, by_worker
    queued_at_0 = by_worker["0"]
    victim = collector.health()[1]["workers"]["0"]["pid"]
    os.kill(victim, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        status, health = collector.health()
        worker = health.get("workers", {}).get("0", {})
        return health if status == 200 and worker.get("restarts") == 1 and worker["pid"] != victim else None

    health = eventually(restarted, timeout=60, what="worker 0 restarted by the supervisor")
    assert health["workers"]["0"]["last_exit_code"] == -signal.SIGKILL
    assert collector.metric("meshwatch_collector_worker_restarts_total", worker="0") == 1
    assert collector.metric("meshwatch_collector_worker_restarts_total", worker="1") == 0
    assert queued_at_0 >= 50  # it had acknowledged spans that only its queue held

    with otlp_sink(port) as sink:
        counts = count_at_sink(sink, trace_ids, 50, timeout=90)
        assert counts["traces"] == 20 and counts["missing_spans"] == 0, counts
        pids = [w["pid"] for w in collector.health()[1]["workers"].values()]
        # SIGTERM to the supervisor drains and stops every worker.
        assert collector.stop(timeout=60) == 0
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def _config_file(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump({"receivers": {"otlp": {}}, "exporters": {"debug": {}}, **config}))
    return path


def test_auto_is_one_per_core_unless_a_component_needs_whole_traces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHWATCH_COLLECTOR_WORKERS", raising=False)
    plain = load_config(
        _config_file(tmp_path, {"service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["debug"]}}}})
    )
    assert resolve_workers(None, plain)[0] == len(os.sched_getaffinity(0))
    assert resolve_workers("3", plain) == (3, "asked")
    monkeypatch.setenv("MESHWATCH_COLLECTOR_WORKERS", "2")
    assert resolve_workers(None, plain)[0] == 2
    with pytest.raises(ValueError, match="at least 1"):
        resolve_workers("0", plain)
    graph = load_config(
        _config_file(
            tmp_path,
            {
                "connectors": {"servicegraph": {}},
                "service": {
                    "pipelines": {
                        "traces": {"receivers": ["otlp"], "exporters": ["servicegraph"]},
                        "metrics": {"receivers": ["servicegraph"], "exporters": ["debug"]},
                    }
                },
            },
        )
    )
    count, reason = resolve_workers("auto", graph)
    assert count == 1 and "servicegraph" in reason


def test_merged_metrics_label_each_workers_samples() -> None:
    text = (
        '# HELP x_total things\n# TYPE x_total counter\nx_total{a="1"} 3.0\n# HELP g a gauge\n# TYPE g gauge\ng 1.0\n'
    )
    merged = merge_metrics({"0": text, "1": text.replace("3.0", "4.0")}).decode()
    assert merged.count("# TYPE x_total counter") == 1
    assert 'x_total{a="1",worker="0"} 3.0' in merged and 'x_total{a="1",worker="1"} 4.0' in merged
    assert 'g{worker="1"} 1.0' in merged


def test_a_bad_worker_count_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from meshwatch.collector.cli import EXIT_CONFIG, main

    path = _config_file(
        tmp_path, {"service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["debug"]}}}}
    )
    assert main(["run", "--config", str(path), "--workers", "many"]) == EXIT_CONFIG
    assert "--workers 'many'" in capsys.readouterr().err
