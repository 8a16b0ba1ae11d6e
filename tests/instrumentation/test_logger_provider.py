"""MeshwatchLoggerProvider: a cached logger per scope, otherwise the SDK provider's behaviour."""

from __future__ import annotations

from opentelemetry._logs import LogRecord
from opentelemetry.sdk._logs import LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk.resources import Resource

from meshwatch._logs import MeshwatchLoggerProvider


class _Collect(LogRecordProcessor):
    def __init__(self) -> None:
        self.records: list[ReadWriteLogRecord] = []

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        self.records.append(log_record)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_the_same_scope_gets_the_same_registered_logger_and_its_records_reach_processors() -> None:
    provider = MeshwatchLoggerProvider(resource=Resource({"service.name": "s"}), shutdown_on_exit=False)
    collect = _Collect()
    provider.add_log_record_processor(collect)
    first = provider.get_logger("fastapi", "0.1", "https://opentelemetry.io/schemas/1.21.0")
    again = provider.get_logger("fastapi", "0.1", "https://opentelemetry.io/schemas/1.21.0")
    assert again is first
    assert first in provider._active_loggers  # still known to the provider (resource/config updates)
    assert provider.get_logger("fastapi", "0.2") is not first  # another version is another scope
    with_attributes = provider.get_logger("fastapi", "0.1", attributes={"a": 1})
    assert with_attributes is not first and with_attributes.instrumentation_scope.attributes == {"a": 1}
    again.emit(LogRecord(body="hello"))
    (record,) = collect.records
    assert record.log_record.body == "hello"
    assert record.instrumentation_scope.name == "fastapi"
    assert record.resource.attributes["service.name"] == "s"
