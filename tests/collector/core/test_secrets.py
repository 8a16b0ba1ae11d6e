"""Secrets planted in every place a collector config can hold one never appear in its output.

The collector runs with a bearer token on its receiver, passwords in exporter URLs,
secret headers, an Elasticsearch password and api key, and a token in a URL's query.
Then each failure path is taken: a backend that refuses connections, a backend that
answers 401 and echoes the request's headers back in its error body, a sender with a
wrong token, and a config that is refused at start. The collector's log, its stdout and
stderr, and its self-metrics are searched for every secret.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from meshwatch.collector.testing import free_port
from meshwatch.stack.testing import eventually

from ._helpers import random_trace_ids, span_request

pytestmark = pytest.mark.integration

SECRETS = {
    "receiver token": "RECV-TOKEN-s3cr3t-1",
    "url password": "URL-PASSWORD-s3cr3t-2",
    "header value": "HEADER-VALUE-s3cr3t-3",
    "grpc header value": "GRPC-HEADER-s3cr3t-4",
    "query token": "QUERY-TOKEN-s3cr3t-5",
    "es password": "ES-PASSWORD-s3cr3t-6",
    "es api key": "ES-APIKEY-s3cr3t-7",
    "wrong token a sender tried": "WRONG-TOKEN-s3cr3t-8",
}


@pytest.fixture
def echoing_backend() -> Iterator[str]:
    """A backend that answers 401 and writes every request header into its error body (some do)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = ("unauthorized; you sent: " + "; ".join(f"{k}={v}" for k, v in self.headers.items())).encode()
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _config(echo_url: str) -> dict:
    closed = f"127.0.0.1:{free_port()}"
    user_url = echo_url.replace("http://", f"http://alice:{SECRETS['url password']}@")
    return {
        "receivers": {"otlp": {"auth": {"bearer_token": SECRETS["receiver token"]}}},
        "exporters": {
            "otlphttp/echo": {
                "traces_endpoint": f"{user_url}/v1/traces?token={SECRETS['query token']}",
                "headers": {"authorization": f"Bearer {SECRETS['header value']}", "x-api-key": SECRETS["header value"]},
                "retry_on_failure": {"initial_interval": 0.2, "max_interval": 0.5},
            },
            "otlp/closed": {
                "endpoint": f"http://{closed}",
                "headers": {"authorization": f"Bearer {SECRETS['grpc header value']}"},
                "retry_on_failure": {"initial_interval": 0.2, "max_interval": 0.5},
            },
            "elasticsearch/closed": {
                "endpoints": [f"http://elastic:{SECRETS['url password']}@127.0.0.1:{free_port()}"],
                "user": "elastic",
                "password": SECRETS["es password"],
                "install_template": False,
                "retry_on_failure": {"initial_interval": 0.2, "max_interval": 0.5},
            },
            "elasticsearch/apikey": {
                "endpoints": [f"http://127.0.0.1:{free_port()}"],
                "api_key": SECRETS["es api key"],
                "install_template": False,
                "retry_on_failure": {"initial_interval": 0.2, "max_interval": 0.5},
            },
        },
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "exporters": ["otlphttp/echo", "otlp/closed"]},
                "logs": {"receivers": ["otlp"], "exporters": ["elasticsearch/closed", "elasticsearch/apikey"]},
            }
        },
    }


def _post(url: str, body: bytes, token: str) -> int:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _leaks(text: str) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text]


def test_no_secret_in_logs_or_metrics_on_any_failure_path(collector_factory, echoing_backend) -> None:
    from ..components._otlp import logs as log_request

    collector = collector_factory(_config(echoing_backend))
    spans = span_request(random_trace_ids(3))
    assert _post(f"{collector.http_url}/v1/traces", spans, SECRETS["receiver token"]) == 200
    logs = log_request({"service.name": "secrets"}, [{"body": "hello"}]).SerializeToString()
    assert _post(f"{collector.http_url}/v1/logs", logs, SECRETS["receiver token"]) == 200
    assert _post(f"{collector.http_url}/v1/traces", spans, SECRETS["wrong token a sender tried"]) == 401

    # every exporter has failed a few times: 401 with echoed headers, refused connections
    eventually(
        lambda: collector.metric("meshwatch_exporter_failed_items_total") >= 4,
        timeout=30,
        what="every exporter failing",
    )
    log = collector.log_path.read_text(errors="replace")
    assert "401" in log or "unauthorized" in log.lower(), "the echoing backend's refusal is logged"
    metrics = urllib.request.urlopen(collector.metrics_url, timeout=10).read().decode()
    assert not _leaks(log), f"secrets in the collector's log: {_leaks(log)}"
    assert not _leaks(metrics), f"secrets in the self-metrics: {_leaks(metrics)}"


def test_no_secret_in_the_error_of_a_refused_config(tmp_path: Path) -> None:
    config = {
        "receivers": {"otlp": {"auth": {"bearer_token": SECRETS["receiver token"]}}},
        "exporters": {
            "otlphttp": {
                "endpoint": f"http://alice:{SECRETS['url password']}@127.0.0.1:1",
                "headers": f"authorization=Bearer {SECRETS['header value']}",  # a string, not a map: refused
            },
            "elasticsearch": {"password": SECRETS["es password"], "number_of_shards": "many"},
        },
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlphttp"]}}},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "meshwatch.collector", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "headers" in output, output[-2000:]
    assert not _leaks(output), f"secrets in the refusal: {_leaks(output)}\n{output[-2000:]}"


def test_secret_values_are_found_by_type_and_place() -> None:
    from pydantic import BaseModel, SecretStr

    from meshwatch.collector._secrets import REDACTED, Scrubber, secret_values

    class Tls(BaseModel):
        key_password: SecretStr | None = None

    class Config(BaseModel):
        endpoint: str
        headers: dict[str, str]
        password: SecretStr
        tls: Tls
        endpoints: list[str]
        plain: str = "not a secret"

    config = Config(
        endpoint="https://u:pw-in-url@host:1/p?token=tok-in-query&x=1",
        headers={"Authorization": "Bearer tok-in-header", "x-tenant": "tenant-a"},
        password=SecretStr("the-password"),
        tls=Tls(key_password=SecretStr("nested-secret")),
        endpoints=["http://e:pw-in-list@h:2"],
    )
    found = secret_values(config)
    assert found >= {"pw-in-url", "tok-in-query", "Bearer tok-in-header", "tok-in-header", "tenant-a"}
    assert found >= {"the-password", "nested-secret", "pw-in-list"}
    assert "not a secret" not in found and "1" not in found  # short values are never scrubbed
    scrub = Scrubber(found)
    assert scrub("auth Bearer tok-in-header failed for u:pw-in-url") == f"auth {REDACTED} failed for u:{REDACTED}"
