"""Every export setting reaches every signal: traces, metrics and logs share one transport.

Metrics used to go through the SDK's own OTLP exporters while traces and logs used
meshwatch's sender, so a setting wired into one path could miss the other (the
certificate did, until it was copied over). Now all three are built by one function
from the same settings; these tests send all three signals and look at what arrived:
headers and gzip at a sink that records each request, TLS with a private CA, a client
certificate and a bearer token at the real collector's mTLS receivers (gRPC and HTTP).
A second exporter of a signal (``otlp,console``) is honoured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshwatch.collector.otlp_sink import otlp_sink, sink_env
from meshwatch.collector.testing import start_collector

from ._helpers import base_env

pytestmark = pytest.mark.integration

_SCRIPT = """
import logging, meshwatch
from opentelemetry import metrics, trace
meshwatch.init(service_name="settings-test")
with trace.get_tracer("settings").start_as_current_span("one-span"):
    logging.getLogger("settings").warning("one log line")
metrics.get_meter("settings").create_counter("settings.calls").add(1)
meshwatch.shutdown(10)
"""

SIGNALS = ("traces", "metrics", "logs")


def _run(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)


def test_headers_and_compression_reach_all_three_signals(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    with otlp_sink() as sink:
        env = base_env(
            **sink_env(
                sink,
                OTEL_EXPORTER_OTLP_HEADERS="x-tenant=acme,authorization=Bearer s3cret",
                OTEL_EXPORTER_OTLP_COMPRESSION="gzip",
                OTEL_EXPORTER_OTLP_TIMEOUT="4000",
            )
        )
        done = _run(script, env)
        assert done.returncode == 0, done.stderr
        by_path = sink.headers_by_path()
        for signal in SIGNALS:
            requests = by_path.get(f"/v1/{signal}")
            assert requests, f"no {signal} export arrived: {sorted(by_path)}"
            for headers in requests:
                assert headers.get("x-tenant") == "acme", (signal, headers)
                assert headers.get("authorization") == "Bearer s3cret", signal
                assert headers.get("content-encoding") == "gzip", signal
                assert headers.get("user-agent") == "meshwatch", f"{signal} went through another sender"
        assert "one-span" in sink.span_names()
        assert any(r.body == "one log line" for r in sink.logs)
        assert any(p.metric == "settings.calls" and p.value == 1 for p in sink.points)


def test_a_second_exporter_of_a_signal_is_honoured(tmp_path: Path) -> None:
    """OTEL_TRACES_EXPORTER=otlp,console: the span reaches the collector and stderr (it used to reach one)."""
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    with otlp_sink() as sink:
        env = base_env(**sink_env(sink, OTEL_TRACES_EXPORTER="otlp,console", OTEL_LOGS_EXPORTER="console,otlp"))
        done = _run(script, env)
        assert done.returncode == 0, done.stderr
        assert "one-span" in sink.span_names()
        assert any(r.body == "one log line" for r in sink.logs)
    printed = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any(item.get("name") == "one-span" for item in printed), done.stderr[-2000:]
    assert any(item.get("body") == "one log line" for item in printed), done.stderr[-2000:]


def test_an_unknown_second_exporter_is_refused_naming_it(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    done = _run(script, base_env(OTEL_TRACES_EXPORTER="otlp,zipkin"))
    assert done.returncode != 0
    assert "unknown traces exporter 'zipkin'; use otlp, console or none" in done.stderr


# --- TLS, client certificate and bearer token at the real collector --------------------------

_ACCEPTED = "meshwatch_receiver_accepted_items_total"
_REFUSED = "meshwatch_receiver_refused_items_total"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_tls_client_certificate_and_token_reach_all_three_signals(tmp_path: Path, protocol: str) -> None:
    from collector.core._certs import make_pki  # the collector tests' throw-away CA

    pki = make_pki(tmp_path / "pki")
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), "client_ca_file": str(pki.ca_file)}
    pipeline = {"receivers": ["otlp"], "exporters": ["debug"]}
    collector = start_collector(
        {
            "receivers": {
                "otlp": {
                    "protocols": {"grpc": {"tls": tls}, "http": {"tls": tls}},
                    "auth": {"bearer_token": "t0ken"},
                }
            },
            "exporters": {"debug": {"verbosity": "basic"}},
            "service": {"pipelines": {s: dict(pipeline) for s in SIGNALS}, "shutdown_timeout": "1s"},
        },
        tmp_path / "collector",
    )
    try:
        _check_all_signals(collector, tmp_path, protocol, pki)
    finally:
        collector.stop(timeout=20)


def _check_all_signals(collector: object, tmp_path: Path, protocol: str, pki: object) -> None:
    transport = "grpc" if protocol == "grpc" else "http"
    endpoint = f"https://{collector.grpc_endpoint}" if protocol == "grpc" else collector.http_url
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)

    def run(token: str) -> None:
        env = base_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_EXPORTER_OTLP_CERTIFICATE=str(pki.ca_file),
            OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=str(pki.client_cert),
            OTEL_EXPORTER_OTLP_CLIENT_KEY=str(pki.client_key),
            OTEL_EXPORTER_OTLP_HEADERS=f"authorization=Bearer {token}",
            OTEL_EXPORTER_OTLP_TIMEOUT="3000",
            OTEL_METRIC_EXPORT_INTERVAL="60000",
        )
        done = _run(script, env)
        assert done.returncode == 0, done.stderr

    def counts(name: str) -> dict[str, float]:
        return {s: collector.metric(name, transport=transport, signal=s) for s in SIGNALS}

    run("wrong")
    refused = counts(_REFUSED)
    assert all(refused[s] > 0 for s in SIGNALS), f"the token reached every signal (refused: {refused})"
    assert counts(_ACCEPTED) == dict.fromkeys(SIGNALS, 0.0)
    run("t0ken")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(counts(_ACCEPTED).values()):
        time.sleep(0.2)
    accepted = counts(_ACCEPTED)
    assert all(accepted[s] >= 1 for s in SIGNALS), f"over TLS with a client certificate: {accepted}"
