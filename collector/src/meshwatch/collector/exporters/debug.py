"""The ``debug`` exporter: prints what arrives to stdout (not queued: it cannot fail).

``verbosity: basic`` prints one line per batch (counts); ``normal`` one line per span,
metric or log record; ``detailed`` the whole request in protobuf text form.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Literal

from google.protobuf import text_format
from pydantic import BaseModel, ConfigDict

from ..batch import Batch
from ..component import Capabilities, ComponentId, CreateSettings, Host, Kind, make_factory
from ..signals import ITEM_NAMES, Signal

__all__ = ["factory", "DebugExporterConfig"]


class DebugExporterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verbosity: Literal["basic", "normal", "detailed"] = "basic"


def _attr(attributes: Any, key: str) -> str:
    for kv in attributes:
        if kv.key == key:
            return kv.value.string_value
    return ""


class DebugExporter:
    _lock = threading.Lock()

    def __init__(self, settings: CreateSettings, config: DebugExporterConfig) -> None:
        self.id: ComponentId = settings.id
        self.signal = settings.signal
        self.verbosity = config.verbosity

    def start(self, host: Host) -> None:
        pass

    def shutdown(self, timeout: float) -> None:
        sys.stdout.flush()

    def consume(self, batch: Batch) -> None:
        lines = [f"{self.id}: {batch.items} {ITEM_NAMES[batch.signal]}"]
        if self.verbosity == "normal":
            lines.extend(self._normal(batch))
        elif self.verbosity == "detailed":
            lines.append(text_format.MessageToString(batch.message))
        with self._lock:
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()

    @staticmethod
    def _normal(batch: Batch) -> list[str]:
        out: list[str] = []
        message = batch.message
        if batch.signal is Signal.TRACES:
            for rs in message.resource_spans:
                service = _attr(rs.resource.attributes, "service.name")
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
                        out.append(
                            f"  {service} {span.name} trace={span.trace_id.hex()} span={span.span_id.hex()} {ms:.3f}ms"
                        )
        elif batch.signal is Signal.LOGS:
            for rl in message.resource_logs:
                service = _attr(rl.resource.attributes, "service.name")
                for sl in rl.scope_logs:
                    for record in sl.log_records:
                        body = record.body.string_value or str(record.body).strip()
                        out.append(f"  {service} {record.severity_text or record.severity_number} {body}")
        else:
            for rm in message.resource_metrics:
                service = _attr(rm.resource.attributes, "service.name")
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data") or "empty"
                        # getattr: the protobuf oneof's member
                        points = len(getattr(metric, kind).data_points) if kind != "empty" else 0
                        out.append(f"  {service} {metric.name} {kind} points={points}")
        return out


factory = make_factory(
    Kind.EXPORTER,
    "debug",
    signals=frozenset(Signal),
    config_model=DebugExporterConfig,
    create=DebugExporter,
    capabilities=Capabilities(mutates_data=False),
)
