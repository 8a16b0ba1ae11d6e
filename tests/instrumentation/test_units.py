"""Pure logic, no servers: settings, the OTLP encoder against the official one, redaction, the launcher's CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as official_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)

from meshwatch._config import ConfigError, resolve
from meshwatch._otlp import encode_logs, encode_spans
from meshwatch._redact import REDACTED, Redactor

from ._helpers import BIN, base_env

# --- settings ------------------------------------------------------------------------


def test_argument_beats_env_beats_default() -> None:
    env = {"OTEL_SERVICE_NAME": "from-env", "OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_BSP_SCHEDULE_DELAY": "250"}
    settings = resolve({"service_name": "from-arg"}, env)
    assert settings.service_name == "from-arg"
    assert settings.sample_rate == 0.25
    assert settings.schedule_delay == 0.25  # OTEL_* durations are milliseconds
    assert resolve({}, {}).sample_rate == 1.0
    assert resolve({}, {"MESHWATCH_SAMPLE_RATE": "0.5"}).sample_rate == 0.5
    assert resolve({"propagators": "b3,jaeger"}, {}).propagators == ("b3", "jaeger")


def test_endpoints_per_protocol_follow_the_otlp_spec() -> None:
    grpc = resolve({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert grpc.endpoint_for("traces") == "http://c:4317"
    http = resolve(
        {}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}
    )
    assert http.endpoint_for("logs") == "http://c:4318/v1/logs"
    mixed = resolve({}, {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://p/api/v1/otlp/v1/metrics"})
    assert mixed.endpoint_for("metrics") == "http://p/api/v1/otlp/v1/metrics"
    assert mixed.endpoint_for("traces") == "http://localhost:4317"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_SAMPLER_ARG": "often"}, "OTEL_TRACES_SAMPLER_ARG='often'"),
        ({"OTEL_TRACES_SAMPLER_ARG": "2"}, "between 0 and 1"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "not supported"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "api-key"}, "OTEL_EXPORTER_OTLP_HEADERS=<hidden>"),
        ({"MESHWATCH_REDACT": "maybe"}, "MESHWATCH_REDACT='maybe'"),
    ],
)
def test_bad_values_name_their_source(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        resolve({}, env)


def test_unknown_argument_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve({"servce_name": "typo"}, {})


def test_headers_never_appear_in_the_settings_repr() -> None:
    settings = resolve({}, {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20topsecret"})
    assert settings.headers == {"authorization": "Bearer topsecret"}
    assert "topsecret" not in repr(settings)


# --- OTLP encoding ---------------------------------------------------------------------


def _spans() -> list:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "enc", "k8s.pod.uid": "abc"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("scope.a", "1.2", schema_url="https://opentelemetry.io/schemas/1.21.0")
    other = provider.get_tracer("scope.b")
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    attributes = {
        "s": "text é",
        "i": 42,
        "neg": -7,
        "big": 2**63 - 1,
        "f": 1.5,
        "b": True,
        "bytes": b"\x00\x01",
        "list": ("a", "b"),
        "ints": (1, 2, 3),
    }
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes=attributes) as root:
        root.add_event("event", {"x": 1, "y": [1.5, 2.5]})
        root.set_status(Status(StatusCode.ERROR, "it broke"))
        with other.start_as_current_span("child", kind=SpanKind.CLIENT, links=[Link(remote, {"l": "v"})]):
            pass
    with tracer.start_as_current_span("remote-child", context=set_span_in_context(NonRecordingSpan(remote))) as s:
        s.set_status(Status(StatusCode.OK))
    return list(exporter.get_finished_spans())


def test_span_encoding_parses_to_what_the_official_encoder_produces() -> None:
    spans = _spans()
    ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
    assert ours == official_spans(spans)
    assert len(ours.resource_spans[0].scope_spans) == 2
    # the attribute cache must not change a second encoding
    assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == official_spans(spans)


def test_log_encoding_parses_to_what_the_official_encoder_produces() -> None:
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.sdk._logs import ReadableLogRecord
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from meshwatch._logs import _OTLPRecord

    resource = Resource({"service.name": "logs"})
    records = [
        ReadableLogRecord(
            log_record=_OTLPRecord(
                1_700_000_000_000_000_000 + i,
                1_700_000_000_000_000_500 + i,
                0xAB if i % 2 else 0,
                0xCD if i % 2 else 0,
                TraceFlags(i % 2),
                "INFO",
                SeverityNumber.INFO,
                f"message {i}",
                {"n": i, "nested": {"a": [1, "x"]}},
            ),
            resource=resource,
            instrumentation_scope=InstrumentationScope(f"logger.{i % 2}"),
        )
        for i in range(4)
    ]
    assert ExportLogsServiceRequest.FromString(encode_logs(records)) == official_logs(records)


# --- redaction -------------------------------------------------------------------------


def test_redaction_by_key_pattern_and_query_parameter() -> None:
    redactor = Redactor(["password", "api[-_.]?key", "token"])
    values = {"user": "ann", "db.password": "pw", "X-API-Key": "k", "url.full": "http://h/p?token=t&page=2"}
    redacted = redactor.mapping(values)
    assert redacted["user"] == "ann"
    assert redacted["db.password"] == REDACTED and redacted["X-API-Key"] == REDACTED
    assert redacted["url.full"] == "http://h/p?token=[REDACTED]&page=2"
    assert values["db.password"] == "pw"  # the caller's mapping is not changed
    clean = {"user": "ann", "url.full": "http://h/p?page=2"}
    assert redactor.mapping(clean) is clean  # nothing sensitive: no copy
    assert Redactor(["password"], enabled=False).mapping(values) is values


# --- the launcher ----------------------------------------------------------------------


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "meshwatch-run"), *args], env=base_env(**env), capture_output=True, text=True, timeout=60
    )


def test_launcher_errors_are_actionable() -> None:
    assert _run("--help").returncode == 0
    missing = _run()
    assert missing.returncode == 2 and "no command given" in missing.stderr
    bad = _run("python", "-c", "pass", OTEL_PROPAGATORS="tracecontext", OTEL_TRACES_SAMPLER="sometimes")
    assert bad.returncode == 2 and "sampler 'sometimes' is unknown" in bad.stderr
    unknown = _run("no-such-program-here")
    assert unknown.returncode == 127 and "command not found" in unknown.stderr


def test_launcher_check_lists_settings_and_instrumentors() -> None:
    check = _run("--check", OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer-xyz123")
    assert check.returncode == 0
    assert "fastapi" in check.stdout and "flask" in check.stdout
    assert "xyz123" not in check.stdout and "<set>" in check.stdout


def test_launcher_sets_up_an_unmodified_program() -> None:
    program = "import logging; logging.getLogger('plain').warning('hello from an unmodified program')"
    result = _run(
        "--service-name",
        "zero",
        "python",
        "-c",
        program,
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    assert result.returncode == 0, result.stderr
    lines = [x for x in result.stdout.splitlines() if "hello from an unmodified program" in x]
    assert len(lines) == 1 and '"service":"zero"' in lines[0] and '"level":"WARNING"' in lines[0]


def test_import_is_light() -> None:
    code = "import sys, meshwatch; print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["uvicorn", "shop.api:app", "--port", "8000"], "shop"),
        (["/venv/bin/gunicorn", "-w", "4", "inventory:app"], "inventory"),
        (["python", "worker.py"], "worker"),
        (["python3", "-m", "celery", "worker"], "celery"),
        (["/usr/local/bin/billing"], "billing"),
        (["-c"], "unknown_service:python"),
        (["gunicorn", "-b", "127.0.0.1:8731", "mysite.wsgi"], "mysite"),  # not "127" from the bind address
        (["uvicorn", "--host", "0.0.0.0", "--port", "8000", "mysite.asgi:application"], "mysite"),
        (["python", "/srv/mysite/manage.py", "runserver", "127.0.0.1:8000"], "mysite"),
        (["hypercorn", "-b", "[::1]:8000", "app:create_app()"], "app"),
    ],
)
def test_service_name_is_detected_from_the_command(argv: list[str], name: str) -> None:
    from meshwatch._resource import detect_service_name

    assert detect_service_name(argv) == name


def test_a_metric_exporter_that_failed_to_build_is_retried_at_the_next_export() -> None:
    """One failed build (a half-imported module in a fresh worker, say) must not stop metrics for good."""
    from meshwatch._metrics import FanOutMetricExporter

    attempts: list[int] = []
    built = object()

    def flaky_factory() -> object:
        attempts.append(1)
        if len(attempts) == 1:
            raise ImportError("cannot import name 'OTLPMetricExporter' from partially initialized module")
        return built

    fan_out = FanOutMetricExporter([flaky_factory])
    assert fan_out._current() == []
    assert fan_out._current() == [built]
    assert fan_out._current() == [built]
    assert len(attempts) == 2  # built once it worked, not again


def test_check_lists_entry_point_instrumentors_as_opentelemetry_instrument_finds_them() -> None:
    """Celery and pika are not in meshwatch's table: they come from their installed entry points."""
    pytest.importorskip("opentelemetry.instrumentation.pika")
    pytest.importorskip("opentelemetry.instrumentation.celery")
    lines = {line.split()[0]: line for line in _run("--check").stdout.splitlines()[1:] if line.startswith("  ")}
    assert "available" in lines["django"]
    assert "available" in lines["celery"] and "opentelemetry-instrumentation-celery" in lines["celery"]
    assert "available" in lines["pika"] and "opentelemetry-instrumentation-pika" in lines["pika"]
    assert "httpx2" not in lines, "an entry point of a package meshwatch's table covers is not listed twice"


@pytest.mark.parametrize(("disabled", "expected"), [("", "instrumented"), ("pika", "skipped")])
def test_init_applies_entry_point_instrumentors_unless_disabled(disabled: str, expected: str) -> None:
    pytest.importorskip("opentelemetry.instrumentation.pika")
    code = (
        "import json, meshwatch; s = meshwatch.init(service_name='ep', traces_exporter='none', "
        "metrics_exporter='none', logs_exporter='none'); "
        "print(json.dumps({'instrumented': s.instrumented, 'skipped': s.skipped}))"
    )
    env = base_env(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled) if disabled else base_env()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    import json

    status = json.loads(next(line for line in out.splitlines() if line.startswith('{"instrumented"')))
    if expected == "instrumented":
        assert "pika" in status["instrumented"]
    else:
        assert "pika" not in status["instrumented"] and status["skipped"]["pika"] == "disabled by configuration"


def test_check_suggests_an_install_that_works_without_pypi(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """meshwatch is not on PyPI: a missing instrumentor's hint installs from where this meshwatch came from."""
    import shlex
    import tomllib
    from pathlib import Path

    from meshwatch import _instrumentors, _run

    installed = _instrumentors._installed
    hidden = "opentelemetry.instrumentation.fastapi"
    monkeypatch.setattr(_instrumentors, "_installed", lambda module: module != hidden and installed(module))
    assert _run.main(["--check"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["fastapi"])
    hint = line.split("skipped: ", 1)[1]
    # This checkout's editable install: `pip install -e '<its instrumentation folder>[fastapi]'`.
    words = shlex.split(hint)
    assert words[:3] == ["pip", "install", "-e"], line
    folder, extra = words[3].removesuffix("]").split("[")
    assert extra == "fastapi"
    project = tomllib.loads((Path(folder) / "pyproject.toml").read_text())["project"]
    assert project["name"] == "meshwatch" and "fastapi" in project["optional-dependencies"]
    assert Path(folder) == Path(_instrumentors.__file__).parents[2]  # the source this process runs


@pytest.mark.parametrize(
    ("direct_url", "expected"),
    [
        ('{"url": "file:///src/mw/instrumentation", "dir_info": {}}', "pip install '/src/mw/instrumentation[redis]'"),
        (
            '{"url": "file:///src/mw/dist/meshwatch-0.1.0-py3-none-any.whl", "archive_info": {}}',
            "pip install '/src/mw/dist/meshwatch-0.1.0-py3-none-any.whl[redis]'",
        ),
        ("", "pip install '/path/to/meshwatch/instrumentation[redis]' (from your meshwatch checkout"),
        ('{"url": "https://example.test/meshwatch.whl"}', "pip install '/path/to/meshwatch/instrumentation[redis]'"),
    ],
)
def test_install_hint_names_the_folder_or_wheel_meshwatch_came_from(direct_url: str, expected: str) -> None:
    from meshwatch._install_hint import install_command

    hint = install_command("redis", direct_url=direct_url)
    assert hint.startswith(expected) and "'meshwatch[" not in hint
