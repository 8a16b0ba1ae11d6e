"""TLS and mTLS on both OTLP receivers, and the exporters' TLS options (issue 11, finding 6).

Real collector processes on loopback, certificates made in the test (``_certs``): a CA,
a server certificate for 127.0.0.1/localhost and a client certificate. The clients are
the ones users run: grpcio, Python's ``ssl`` (urllib, http.client), the meshwatch SDK,
the collector's own otlp/otlphttp exporters, and for what grpcio cannot do (a TLS 1.2
only gRPC client) an HTTP/2 client of its own over Python's ``ssl`` (``h2``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshwatch.collector.config import ConfigError, load_config
from meshwatch.collector.testing import free_port, start_collector

from ._certs import Pki, issue, make_pki
from ._helpers import random_trace_ids, span_request

pytestmark = pytest.mark.integration

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
ACCEPTED = "meshwatch_receiver_accepted_items_total"
#: How Python's HTTPS client reports a connection the server ended in or right after the handshake
#: (with TLS 1.3 a refused client certificate is noticed only when the answer is read).
NO_ANSWER = {"SSLError", "SSLEOFError", "SSLZeroReturnError", "ConnectionResetError", "RemoteDisconnected"}
REFUSED = "meshwatch_receiver_refused_items_total"


# --- clients --------------------------------------------------------------------------------------


def grpc_export(endpoint: str, *, ca: Path | None, cert: Path | None = None, key: Path | None = None, plain=False):
    """grpcio's answer to one Export call: ``grpc.StatusCode.OK`` or the error's code."""
    if plain:
        channel = grpc.insecure_channel(endpoint)
    else:
        credentials = grpc.ssl_channel_credentials(
            ca.read_bytes() if ca else None,
            key.read_bytes() if key else None,
            cert.read_bytes() if cert else None,
        )
        channel = grpc.secure_channel(endpoint, credentials)
    try:
        channel.unary_unary(TRACES)(span_request(random_trace_ids(1)), timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()
    finally:
        channel.close()


def client_context(
    ca: Path | None, cert: Path | None = None, key: Path | None = None, *, max_version: str | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert and key:
        context.load_cert_chain(str(cert), str(key))
    if max_version == "1.2":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def http_export(url: str, context: ssl.SSLContext | None) -> int | str:
    """The HTTP status of one OTLP/HTTP request, or the name of the error that stopped it."""
    request = urllib.request.Request(
        f"{url}/v1/traces", data=span_request(random_trace_ids(1)), headers={"Content-Type": "application/x-protobuf"}
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return type(reason).__name__


def h2_grpc_export(endpoint: str, context: ssl.SSLContext) -> tuple[int | None, str, str]:
    """One gRPC Export call spoken over Python's ``ssl`` and ``h2``: (grpc-status, grpc-message, TLS version).

    grpcio cannot be held to TLS 1.2; this client can (``context.maximum_version``).
    """
    import h2.config
    import h2.connection
    import h2.events

    host, _, port = endpoint.rpartition(":")
    context.set_alpn_protocols(["h2"])
    body = span_request(random_trace_ids(1))
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        version = tls.version() or ""
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", TRACES),
                (":authority", endpoint),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        conn.send_data(stream, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
        tls.sendall(conn.data_to_send())
        headers: dict[str, str] = {}
        ended = False
        while not ended:
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    headers.update(dict(event.headers))
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended = True
            tls.sendall(conn.data_to_send())
    status = headers.get("grpc-status")
    return (int(status) if status is not None else None), headers.get("grpc-message", ""), version


# --- collectors -----------------------------------------------------------------------------------


def _server_tls(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), **extra}


def _tls_config(grpc_tls: dict | None, http_tls: dict | None, *, exporters: dict | None = None) -> dict[str, Any]:
    protocols: dict[str, Any] = {}
    if grpc_tls is not None:
        protocols["grpc"] = {"tls": grpc_tls} if grpc_tls else {}
    if http_tls is not None:
        protocols["http"] = {"tls": http_tls} if http_tls else {}
    exporters = exporters or {"debug": {"verbosity": "normal"}}
    return {
        "receivers": {"otlp": {"protocols": protocols}},
        "exporters": exporters,
        # Exporters that cannot deliver (on purpose) should not hold the test's teardown.
        "service": {
            "pipelines": {"traces": {"receivers": ["otlp"], "exporters": list(exporters)}},
            "shutdown_timeout": "1s",
        },
    }


def _accepted(collector: Any, transport: str) -> float:
    return collector.metric(ACCEPTED, transport=transport, signal="traces")


def assert_no_key_material(collector: Any, *keys: Path) -> None:
    """No private key, nor any line of one, in the collector's log."""
    log = collector.log_path.read_text(errors="replace")
    assert "PRIVATE KEY" not in log
    for key in keys:
        for line in key.read_text().splitlines():
            if len(line) > 20 and "-----" not in line:
                assert line not in log, f"a line of {key.name} is in the collector's log"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


# --- the receivers --------------------------------------------------------------------------------


def test_tls_on_both_receivers_accepts_a_client_that_trusts_the_ca_and_refuses_plaintext(collector_factory, pki):
    collector = collector_factory(_tls_config(_server_tls(pki), _server_tls(pki)))
    assert collector.http_url.startswith("https://")

    assert grpc_export(collector.grpc_endpoint, ca=pki.ca_file) == grpc.StatusCode.OK
    assert http_export(collector.http_url, client_context(pki.ca_file)) == 200
    assert _accepted(collector, "grpc") == 1
    assert _accepted(collector, "http") == 1

    # Plaintext to a TLS port: no request gets through.
    assert grpc_export(collector.grpc_endpoint, ca=None, plain=True) == grpc.StatusCode.UNAVAILABLE
    assert http_export(collector.http_url.replace("https://", "http://"), None) in {*NO_ANSWER, "BadStatusLine"}
    # A client that does not trust the CA (the system roots) refuses the server.
    assert grpc_export(collector.grpc_endpoint, ca=None) == grpc.StatusCode.UNAVAILABLE
    assert http_export(collector.http_url, client_context(None)) == "SSLCertVerificationError"
    assert _accepted(collector, "grpc") == 1
    assert _accepted(collector, "http") == 1
    # The span arrived, decoded, at the end of the pipeline.
    assert "GET /items/0" in collector.log_path.read_text()
    assert_no_key_material(collector, pki.server_key)


def test_mtls_refuses_a_client_without_a_certificate_from_the_client_ca(collector_factory, pki, tmp_path):
    tls = _server_tls(pki, client_ca_file=str(pki.ca_file))
    collector = collector_factory(_tls_config(tls, tls))
    stranger = make_pki(tmp_path / "stranger", name="stranger")

    # Without a client certificate.
    assert grpc_export(collector.grpc_endpoint, ca=pki.ca_file) == grpc.StatusCode.UNAVAILABLE
    assert http_export(collector.http_url, client_context(pki.ca_file)) in NO_ANSWER
    # With one signed by another CA.
    assert (
        grpc_export(collector.grpc_endpoint, ca=pki.ca_file, cert=stranger.client_cert, key=stranger.client_key)
        == grpc.StatusCode.UNAVAILABLE
    )
    assert (
        http_export(collector.http_url, client_context(pki.ca_file, stranger.client_cert, stranger.client_key))
        in NO_ANSWER
    )
    assert _accepted(collector, "grpc") == 0
    assert _accepted(collector, "http") == 0

    # With the client certificate.
    assert (
        grpc_export(collector.grpc_endpoint, ca=pki.ca_file, cert=pki.client_cert, key=pki.client_key)
        == grpc.StatusCode.OK
    )
    assert http_export(collector.http_url, client_context(pki.ca_file, pki.client_cert, pki.client_key)) == 200
    assert _accepted(collector, "grpc") == 1
    assert _accepted(collector, "http") == 1
    assert_no_key_material(collector, pki.server_key, pki.client_key)


def test_min_version_1_3_refuses_a_tls_1_2_client(collector_factory, pki):
    strict = collector_factory(_tls_config(_server_tls(pki, min_version="1.3"), _server_tls(pki, min_version=1.3)))
    default = collector_factory(_tls_config(_server_tls(pki), _server_tls(pki)))

    # HTTP: the handshake itself is refused.
    assert http_export(strict.http_url, client_context(pki.ca_file, max_version="1.2")) in NO_ANSWER
    assert http_export(strict.http_url, client_context(pki.ca_file)) == 200
    assert http_export(default.http_url, client_context(pki.ca_file, max_version="1.2")) == 200

    # gRPC: grpcio has no TLS version setting, so the call on a TLS 1.2 connection is
    # refused (PERMISSION_DENIED) before its body is read, and counted.
    status, message, version = h2_grpc_export(strict.grpc_endpoint, client_context(pki.ca_file, max_version="1.2"))
    assert version == "TLSv1.2"
    assert status == grpc.StatusCode.PERMISSION_DENIED.value[0], (status, message)
    assert "TLS 1.3" in message
    assert strict.metric(REFUSED, transport="grpc", reason="tls_version") == 1
    assert h2_grpc_export(strict.grpc_endpoint, client_context(pki.ca_file))[::2] == (0, "TLSv1.3")
    assert grpc_export(strict.grpc_endpoint, ca=pki.ca_file) == grpc.StatusCode.OK
    # min_version 1.2 (the default) serves the same TLS 1.2 client.
    assert h2_grpc_export(default.grpc_endpoint, client_context(pki.ca_file, max_version="1.2"))[::2] == (0, "TLSv1.2")

    assert _accepted(strict, "grpc") == 2
    assert _accepted(strict, "http") == 1
    assert _accepted(default, "grpc") == 1


def _replace(source: Path, target: Path) -> None:
    """As cert-manager and most tools rotate: a new file renamed over the old one."""
    tmp = target.with_name(target.name + ".new")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def test_rotated_certificate_is_served_on_the_next_connection(collector_factory, pki, tmp_path):
    collector = collector_factory(_tls_config(_server_tls(pki), _server_tls(pki)))
    assert grpc_export(collector.grpc_endpoint, ca=pki.ca_file) == grpc.StatusCode.OK
    assert http_export(collector.http_url, client_context(pki.ca_file)) == 200

    # A new certificate from a new CA at the same paths.
    new = make_pki(tmp_path / "new", name="rotated")
    _replace(new.server_key, pki.server_key)
    _replace(new.server_cert, pki.server_cert)
    assert grpc_export(collector.grpc_endpoint, ca=new.ca_file) == grpc.StatusCode.OK
    assert http_export(collector.http_url, client_context(new.ca_file)) == 200
    # ... and the old one is gone: a client trusting only the old CA refuses it.
    assert grpc_export(collector.grpc_endpoint, ca=pki.ca_file) == grpc.StatusCode.UNAVAILABLE
    assert http_export(collector.http_url, client_context(pki.ca_file)) == "SSLCertVerificationError"

    # A broken rotation (a key that is not the certificate's) keeps the working certificate.
    other = make_pki(tmp_path / "other", name="other")
    _replace(other.server_key, pki.server_key)
    assert grpc_export(collector.grpc_endpoint, ca=new.ca_file) == grpc.StatusCode.OK
    assert http_export(collector.http_url, client_context(new.ca_file)) == 200
    assert http_export(collector.http_url, client_context(new.ca_file)) == 200
    log = collector.log_path.read_text()
    assert log.count("do not load, keeping the previous certificate") == 2, collector.log_tail()  # one per receiver
    # Rewritten in place (no rename) with a matching pair: served again.
    issue(new, "127.0.0.1", pki.server_cert, pki.server_key, server=True)
    assert grpc_export(collector.grpc_endpoint, ca=new.ca_file) == grpc.StatusCode.OK
    assert http_export(collector.http_url, client_context(new.ca_file)) == 200
    assert collector.log_path.read_text().count("TLS certificate reloaded") == 4
    assert_no_key_material(collector, pki.server_key, new.server_key, other.server_key)


_SDK_SCRIPT = """
import sys, meshwatch
from opentelemetry import trace
protocol, endpoint, ca, name = sys.argv[1:5]
meshwatch.init(service_name="tls-sdk", endpoint=endpoint, protocol=protocol, certificate=ca or None,
               metrics_exporter="none", logs_exporter="none", log_stdout=False, export_timeout=3)
with trace.get_tracer("tls-test").start_as_current_span(name):
    pass
meshwatch.shutdown(5)
"""


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_sdk_certificate_setting_delivers_spans_to_a_tls_receiver(collector_factory, pki, tmp_path, protocol):
    collector = collector_factory(_tls_config(_server_tls(pki), _server_tls(pki)))
    script = tmp_path / "sdk.py"
    script.write_text(_SDK_SCRIPT)
    if protocol == "grpc":
        endpoint, transport = f"https://{collector.grpc_endpoint}", "grpc"
    else:
        endpoint, transport = collector.http_url, "http"

    def run(ca: str, name: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHWATCH_"))}
        return subprocess.run(
            [sys.executable, str(script), protocol, endpoint, ca, name],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    trusted = run(str(pki.ca_file), "span-with-certificate")
    assert trusted.returncode == 0, trusted.stderr
    assert _accepted(collector, transport) == 1
    assert "span-with-certificate" in collector.log_path.read_text()
    # Without the setting the SDK verifies against the system roots: not delivered.
    untrusted = run("", "span-without-certificate")
    assert untrusted.returncode == 0, untrusted.stderr
    assert _accepted(collector, transport) == 1
    assert "span-without-certificate" not in collector.log_path.read_text()


_SDK_MTLS_SCRIPT = """
import sys, meshwatch
from opentelemetry import trace
protocol, endpoint, ca, cert, key, name = sys.argv[1:7]
meshwatch.init(service_name="mtls-sdk", endpoint=endpoint, protocol=protocol, certificate=ca,
               client_certificate=cert or None, client_key=key or None,
               metrics_exporter="none", logs_exporter="none", log_stdout=False, export_timeout=3)
with trace.get_tracer("tls-test").start_as_current_span(name):
    pass
meshwatch.shutdown(5)
"""


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_sdk_client_certificate_delivers_spans_to_an_mtls_receiver(collector_factory, pki, tmp_path, protocol):
    """OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE / _KEY (init's client_certificate, client_key): mTLS from the SDK."""
    mtls = {**_server_tls(pki), "client_ca_file": str(pki.ca_file)}
    collector = collector_factory(_tls_config(mtls, mtls))
    script = tmp_path / "sdk_mtls.py"
    script.write_text(_SDK_MTLS_SCRIPT)
    endpoint = f"https://{collector.grpc_endpoint}" if protocol == "grpc" else collector.http_url
    transport = "grpc" if protocol == "grpc" else "http"

    def run(cert: str, key: str, name: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHWATCH_"))}
        argv = [sys.executable, str(script), protocol, endpoint, str(pki.ca_file), cert, key, name]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)

    without = run("", "", "span-without-client-certificate")
    assert without.returncode == 0, without.stderr
    assert _accepted(collector, transport) == 0, "an mTLS receiver refuses a client without a certificate"
    with_cert = run(str(pki.client_cert), str(pki.client_key), "span-with-client-certificate")
    assert with_cert.returncode == 0, with_cert.stderr
    assert _accepted(collector, transport) == 1
    assert "span-with-client-certificate" in collector.log_path.read_text()
    assert_no_key_material(collector, pki.client_key)


# --- the exporters --------------------------------------------------------------------------------


def _wait_for(check, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_otlp_and_otlphttp_exporters_deliver_to_an_mtls_receiver_of_a_second_collector(collector_factory, pki):
    tls = _server_tls(pki, client_ca_file=str(pki.ca_file))
    backend = collector_factory(_tls_config(tls, tls), name="backend")
    client = {"ca_file": str(pki.ca_file), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    exporters = {
        "otlp/tls": {"endpoint": backend.grpc_endpoint, "tls": client, "retry_on_failure": {"max_interval": "1s"}},
        "otlphttp/tls": {"endpoint": backend.http_url, "tls": client, "retry_on_failure": {"max_interval": "1s"}},
        # No client certificate: the mTLS receiver refuses both; their data stays queued.
        "otlp/nocert": {"endpoint": backend.grpc_endpoint, "tls": {"ca_file": str(pki.ca_file)}},
        "otlphttp/nocert": {"endpoint": backend.http_url, "tls": {"ca_file": str(pki.ca_file)}},
    }
    front = collector_factory(_tls_config({}, None, exporters=exporters), name="front")
    for _ in range(3):
        assert grpc_export(front.grpc_endpoint, ca=None, plain=True) == grpc.StatusCode.OK

    assert _wait_for(lambda: _accepted(backend, "grpc") == 3 and _accepted(backend, "http") == 3), backend.log_tail()
    sent = "meshwatch_exporter_sent_items_total"
    assert front.metric(sent, exporter="otlp/tls") == 3
    assert front.metric(sent, exporter="otlphttp/tls") == 3
    assert _wait_for(lambda: front.metric("meshwatch_exporter_failed_items_total", exporter="otlp/nocert") > 0)
    assert _wait_for(lambda: front.metric("meshwatch_exporter_failed_items_total", exporter="otlphttp/nocert") > 0)
    time.sleep(1)
    assert front.metric(sent, exporter="otlp/nocert") == 0
    assert front.metric(sent, exporter="otlphttp/nocert") == 0
    assert _accepted(backend, "grpc") == 3
    assert _accepted(backend, "http") == 3
    assert_no_key_material(front, pki.client_key)
    assert_no_key_material(backend, pki.server_key)


def test_otlphttp_insecure_skip_verify_delivers_to_a_server_it_cannot_verify(collector_factory, pki):
    backend = collector_factory(_tls_config(None, _server_tls(pki)), name="backend")
    exporters = {
        "otlphttp/skip": {"endpoint": backend.http_url, "tls": {"insecure_skip_verify": True}},
        "otlphttp/verify": {"endpoint": backend.http_url, "retry_on_failure": {"max_interval": "1s"}},
    }
    front = collector_factory(_tls_config({}, None, exporters=exporters), name="front")
    assert grpc_export(front.grpc_endpoint, ca=None, plain=True) == grpc.StatusCode.OK
    assert _wait_for(lambda: front.metric("meshwatch_exporter_sent_items_total", exporter="otlphttp/skip") == 1)
    assert _wait_for(lambda: front.metric("meshwatch_exporter_failed_items_total", exporter="otlphttp/verify") > 0)
    assert front.metric("meshwatch_exporter_sent_items_total", exporter="otlphttp/verify") == 0
    assert _accepted(backend, "http") == 1


def test_tls_settings_refused_with_a_reason(tmp_path):
    config = tmp_path / "collector.yaml"
    config.write_text(
        """
receivers:
  otlp:
    protocols:
      grpc: {tls: {cert_file: s.pem, key_file: k.pem, min_version: "1.1"}}
      http: {tls: {cert_file: s.pem, key_file: k.pem, ca_file: ca.pem}}
exporters:
  otlp: {endpoint: "127.0.0.1:4317", tls: {insecure_skip_verify: true}}
  otlp/plain: {endpoint: "127.0.0.1:4317", tls: {insecure: true, ca_file: ca.pem}}
  otlphttp: {endpoint: "https://127.0.0.1:4318", tls: {cert_file: c.pem}}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [otlp, otlp/plain, otlphttp]}
"""
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    problems = "\n".join(caught.value.problems)
    assert "receivers.otlp.protocols.grpc.tls.min_version: Value error, TLS 1.1 is deprecated" in problems
    assert "receivers.otlp.protocols.http.tls: Value error, ca_file is a client setting" in problems
    assert "client_ca_file" in problems
    assert "exporters.otlp.tls.insecure_skip_verify: Value error, not supported by the otlp (gRPC) exporter" in problems
    assert "grpcio's Python API always verifies the server's certificate chain" in problems
    assert "exporters.otlphttp.tls: Value error, cert_file and key_file go together" in problems
    assert (
        "exporters.otlp/plain.tls: Value error, insecure: true is plaintext gRPC, so ca_file would be ignored"
        in problems
    )


@pytest.mark.parametrize(
    ("section", "expect"),
    [
        ("receiver", "cannot start otlp: protocols.grpc.tls: cannot load the TLS certificate"),
        ("otlp", "otlp exporter to 127.0.0.1:"),
        ("otlphttp", "otlphttp exporter to https://127.0.0.1:"),
    ],
)
def test_a_missing_or_mismatched_tls_file_stops_the_start_naming_the_setting(tmp_path, pki, section, expect):
    other = make_pki(tmp_path / "other", name="other")
    mismatched = {"cert_file": str(pki.server_cert), "key_file": str(other.server_key)}
    port = free_port()
    if section == "receiver":
        config = _tls_config(mismatched, None)
    elif section == "otlp":
        config = _tls_config(
            {}, None, exporters={"otlp/down": {"endpoint": f"127.0.0.1:{port}", "tls": {"ca_file": "nope"}}}
        )
    else:
        exporters = {"otlphttp/down": {"endpoint": f"https://127.0.0.1:{port}", "tls": mismatched}}
        config = _tls_config({}, None, exporters=exporters)
    with pytest.raises(RuntimeError, match="exited with 1") as caught:
        start_collector(config, tmp_path / "collector", timeout=30)
    assert expect in str(caught.value)
    assert "PRIVATE KEY" not in str(caught.value)


# --- the plaintext warning (pure logic: nothing listens beyond loopback in the tests) -------------


def test_plaintext_beyond_loopback_is_one_warning_line(caplog):
    from meshwatch.collector.component import ComponentId, CreateSettings
    from meshwatch.collector.receivers._tls import is_loopback
    from meshwatch.collector.receivers.otlp import OtlpReceiver, OtlpReceiverConfig
    from meshwatch.collector.telemetry import Telemetry

    assert is_loopback("127.0.0.1:4317") and is_loopback("[::1]:4317") and is_loopback("localhost:4318")
    assert not is_loopback("0.0.0.0:4317") and not is_loopback("[::]:4317") and not is_loopback("10.0.0.7:4318")
    assert not is_loopback(":4317") and not is_loopback("collector.example:4317")

    def warnings(protocols: dict, auth: dict | None = None) -> list[str]:
        config = OtlpReceiverConfig.model_validate({"protocols": protocols, "auth": auth or {}})
        receiver = OtlpReceiver(CreateSettings(ComponentId.parse("otlp"), None, Telemetry()), config, {})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="meshwatch.collector.receiver"):
            receiver._warn_plaintext()
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    both = warnings(
        {"grpc": {"endpoint": "0.0.0.0:4317"}, "http": {"endpoint": "0.0.0.0:4318"}}, {"bearer_token": "s3"}
    )
    assert len(both) == 1
    assert "OTLP/gRPC on 0.0.0.0:4317 and OTLP/HTTP on 0.0.0.0:4318" in both[0]
    assert "bearer token" in both[0] and "s3" not in both[0]
    tls = {"cert_file": "s.pem", "key_file": "k.pem"}
    one = warnings({"grpc": {"endpoint": "0.0.0.0:4317", "tls": tls}, "http": {"endpoint": "10.0.0.7:4318"}})
    assert len(one) == 1 and "OTLP/HTTP on 10.0.0.7:4318" in one[0] and "gRPC" not in one[0]
    assert warnings({"grpc": {"endpoint": "127.0.0.1:4317"}, "http": {"endpoint": "localhost:4318"}}) == []
    assert warnings({"grpc": {"endpoint": "0.0.0.0:4317", "tls": tls}}) == []


def test_a_collector_bound_beyond_loopback_without_tls_logs_one_warning_line(tmp_path):
    """The real process, at start. Its ports are held on 127.0.0.1 by the test, so its 0.0.0.0
    binds fail right after the warning: nothing ever listens beyond loopback."""
    holders = []
    for _ in range(2):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        holders.append(holder)
    grpc_port, http_port = (h.getsockname()[1] for h in holders)
    config = _tls_config({}, {})
    config["receivers"]["otlp"]["protocols"] = {
        "grpc": {"endpoint": f"0.0.0.0:{grpc_port}"},
        "http": {"endpoint": f"0.0.0.0:{http_port}"},
    }
    try:
        with pytest.raises(RuntimeError, match="exited with 1"):
            start_collector(config, tmp_path / "collector", timeout=30)
    finally:
        for holder in holders:
            holder.close()
    lines = [
        line for line in (tmp_path / "collector" / "collector.log").read_text().splitlines() if "clear text" in line
    ]
    assert len(lines) == 1, lines
    assert '"level":"warning"' in lines[0]
    assert f"OTLP/gRPC on 0.0.0.0:{grpc_port} and OTLP/HTTP on 0.0.0.0:{http_port}" in lines[0]


def test_http_receiver_sends_no_session_tickets(collector_factory, pki):
    """TLS 1.3 session tickets made each new HTTPS connection from Python's http.client wait
    ~24 ms before its answer (bench/collector/tls.py: 36 instead of 230 connections/s)."""
    import http.client

    collector = collector_factory(_tls_config(None, _server_tls(pki)))
    host, port = collector.http_url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), timeout=5, context=client_context(pki.ca_file))
    conn.request(
        "POST", "/v1/traces", body=span_request(random_trace_ids(1)), headers={"Content-Type": "application/x-protobuf"}
    )
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    assert conn.sock.version() == "TLSv1.3"
    session = conn.sock.session
    assert session is None or not session.has_ticket
    conn.close()


def test_failed_handshakes_write_no_log_lines(collector_factory, pki):
    """A scanner or a plaintext client retrying: gRPC core alone wrote one plain-text
    stderr line per failed handshake (50 connections, 50 lines outside the JSON log)."""
    collector = collector_factory(_tls_config(_server_tls(pki), _server_tls(pki)))
    for endpoint in (collector.grpc_endpoint, collector.http_url.removeprefix("https://")):
        host, port = endpoint.split(":")
        for _ in range(50):
            with socket.create_connection((host, int(port)), timeout=5) as raw:
                raw.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 64)
                with contextlib.suppress(OSError):
                    raw.recv(100)
    assert grpc_export(collector.grpc_endpoint, ca=pki.ca_file) == grpc.StatusCode.OK
    assert http_export(collector.http_url, client_context(pki.ca_file)) == 200
    collector.stop()
    lines = collector.log_path.read_text(errors="replace").splitlines()
    assert [line for line in lines if "Handshake failed" in line or "SSL" in line] == []
    assert [line for line in lines if not line.startswith(("{", "debug:", "  "))] == []
