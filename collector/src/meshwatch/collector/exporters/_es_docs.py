"""OTLP log records → Elasticsearch documents, the index template, and the bulk body.

The field mapping is docs/telemetry-contract.md "Logs in Elasticsearch", exactly.
Records are read from ``_logs_lite.LiteLogsRequest`` (attributes as a C-built dict of
raw ``AnyValue`` bytes: several times cheaper than walking ``KeyValue`` messages).
Encoding is batch-oriented: resource- and scope-level fields are computed once per
resource/scope and copied into each record's dict; each document is encoded once with
orjson; its ``_id`` is a hash of those bytes, so the same record always gets the same
id and a resend (after a crash, or a retry whose first attempt did land) is answered
409 by ``create`` instead of being indexed twice.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from ..otlp_values import any_to_python
from ._logs_lite import LiteLogsRequest, any_bytes_to_python

__all__ = ["ECS_VERSION", "TEMPLATE_VERSION", "index_template", "encode_logs", "Encoded", "LEVELS_BY_NUMBER"]

#: Bump when the mapping below changes: ``start`` replaces an older installed template.
TEMPLATE_VERSION = 2
#: The Elastic Common Schema release the documents follow (ECS names wherever ECS has one;
#: ``service.namespace``, ``attributes``, ``resource`` and ``scope`` are meshwatch's own).
ECS_VERSION = "8.17.0"


def index_template(prefix: str, shards: int, replicas: int) -> dict[str, Any]:
    """The composable index template for ``<prefix>-*`` (daily indices)."""
    keyword = {"type": "keyword", "ignore_above": 1024}
    return {
        "index_patterns": [f"{prefix}-*"],
        "version": TEMPLATE_VERSION,
        "priority": 200,
        "_meta": {"managed_by": "meshwatch-collector", "contract": "docs/telemetry-contract.md"},
        "template": {
            "settings": {"index": {"number_of_shards": shards, "number_of_replicas": replicas}},
            "mappings": {
                # Only the documented fields: anything else would be a mapping we did not promise.
                "dynamic": "strict",
                "properties": {
                    "@timestamp": {"type": "date_nanos"},
                    "ecs": {"properties": {"version": keyword}},
                    "message": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 1024}}},
                    "log": {
                        "properties": {
                            "level": keyword,
                            "logger": keyword,
                        }
                    },
                    "service": {
                        "properties": {
                            "name": keyword,
                            "namespace": keyword,
                            "version": keyword,
                            "node": {"properties": {"name": keyword}},
                            "environment": keyword,
                        }
                    },
                    "event": {"properties": {"severity": {"type": "long"}}},
                    "host": {"properties": {"name": keyword, "hostname": keyword}},
                    "trace": {"properties": {"id": keyword}},
                    "span": {"properties": {"id": keyword}},
                    "error": {
                        "properties": {
                            "type": keyword,
                            "message": {"type": "text"},
                            "stack_trace": {"type": "text"},
                        }
                    },
                    # Leaf values longer than this are kept in _source but not indexed
                    # (Lucene refuses terms over 32 KB, which would refuse the whole document).
                    "attributes": {"type": "flattened", "ignore_above": 8191},
                    "resource": {"type": "flattened", "ignore_above": 8191},
                    "scope": {"properties": {"name": keyword, "version": keyword}},
                },
            },
        },
    }


LEVELS_BY_NUMBER = ["", *["trace"] * 4, *["debug"] * 4, *["info"] * 4, *["warn"] * 4, *["error"] * 4, *["fatal"] * 4]
_LEVEL_WORDS = {
    "warning": "warn",
    "err": "error",
    "critical": "fatal",
    "crit": "fatal",
    "emergency": "fatal",
    "emerg": "fatal",
    "alert": "fatal",
    "panic": "fatal",
    "information": "info",
    "informational": "info",
    "notice": "info",
    "dbg": "debug",
}
_LOGGER_KEYS = ("logger.name", "log.logger", "code.namespace")
_ERROR_KEYS = {"exception.type": "type", "exception.message": "message", "exception.stacktrace": "stack_trace"}
_ECS = {"version": ECS_VERSION}
_MOVED = frozenset((*_LOGGER_KEYS[:2], *_ERROR_KEYS))


def level_of(text: str, number: int) -> str:
    if text:
        word = text.strip().lower()
        return _LEVEL_WORDS.get(word, word)
    if 0 < number < len(LEVELS_BY_NUMBER):
        return LEVELS_BY_NUMBER[number]
    return ""


class Encoded:
    """A bulk request body and, per document, where its record is and what it was."""

    __slots__ = ("body", "documents", "positions")

    def __init__(self) -> None:
        self.body = bytearray()
        #: per document: (index, _id, encoded source)
        self.documents: list[tuple[str, str, bytes]] = []
        #: per document: (resource index, scope index, record index) in the request
        self.positions: list[tuple[int, int, int]] = []


class _Clock:
    """Caches the formatted second and day: records of a batch share them."""

    __slots__ = ("day", "prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""
        self.day = ""

    def stamp(self, nanos: int) -> tuple[str, str]:
        second, fraction = divmod(nanos, 1_000_000_000)
        if second != self.second:
            parts = time.gmtime(second)
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", parts)
            self.day = time.strftime("%Y.%m.%d", parts)
        return f"{self.prefix}.{fraction:09d}Z", self.day


def _resource_fields(resource: Any) -> dict[str, Any]:
    attrs = {kv.key: any_to_python(kv.value) for kv in resource.attributes}
    fields: dict[str, Any] = {"ecs": _ECS}
    service = {}
    for key in ("name", "namespace", "version"):
        value = attrs.get(f"service.{key}")
        if value is not None:
            service[key] = str(value)
    if "service.instance.id" in attrs:
        service["node"] = {"name": str(attrs["service.instance.id"])}
    environment = attrs.get("deployment.environment.name", attrs.get("deployment.environment"))
    if environment is not None:
        service["environment"] = str(environment)
    if service:
        fields["service"] = service
    if "host.name" in attrs:
        # OTel's host.name is the host's name as the OS reports it: ECS host.hostname, and host.name
        fields["host"] = {"name": str(attrs["host.name"]), "hostname": str(attrs["host.name"])}
    if attrs:
        fields["resource"] = attrs
    return fields


def _message(body: Any) -> str | None:
    """The body as ``message``: a string as is, anything else as JSON."""
    kind = body.WhichOneof("value")
    if kind == "string_value":
        return body.string_value
    if kind is None:
        return None
    return orjson.dumps(any_to_python(body)).decode()


def _document(base: dict[str, Any], record: Any, scope_name: str, clock: _Clock, fallback_ns: int) -> tuple[Any, str]:
    """One record's document (a dict) and the day of its index."""
    doc = dict(base)
    nanos = record.time_unix_nano or record.observed_time_unix_nano or fallback_ns
    stamp, day = clock.stamp(nanos)
    doc["@timestamp"] = stamp
    message = _message(record.body)
    if message is not None:
        doc["message"] = message
    number = record.severity_number
    level = level_of(record.severity_text, number)
    log: dict[str, Any] = {}
    if level:
        log["level"] = level
    if number:
        doc["event"] = {"severity": number}
    attributes: dict[str, Any] = {}
    error: dict[str, Any] = {}
    named_logger = code_namespace = None
    record_attributes = record.attributes
    for key in record_attributes:  # map<string, bytes>: iterating keys is the cheapest walk
        raw = record_attributes[key]
        # the common case inline: a short string value (tag 0x0A, one-byte length)
        if len(raw) > 1 and raw[0] == 0x0A and raw[1] < 0x80 and raw[1] == len(raw) - 2:
            value = raw[2:].decode("utf-8", "replace")
        else:
            value = any_bytes_to_python(raw)
        if key in _MOVED:
            if key in _ERROR_KEYS:
                error[_ERROR_KEYS[key]] = str(value)
            else:
                named_logger = named_logger or str(value)
            continue
        attributes[key] = value
        if key == "code.namespace":
            code_namespace = str(value)
    logger = code_namespace or named_logger or scope_name
    if logger:
        log["logger"] = logger
    if log:
        doc["log"] = log
    if error:
        doc["error"] = error
    if attributes:
        doc["attributes"] = attributes
    trace_id = record.trace_id
    if trace_id and any(trace_id):
        doc["trace"] = {"id": trace_id.hex()}
    span_id = record.span_id
    if span_id and any(span_id):
        doc["span"] = {"id": span_id.hex()}
    return doc, day


def encode_logs(request: Any, prefix: str, *, received_ns: int | None = None) -> Encoded:
    """Encode every log record of a request as a ``create`` bulk body.

    ``request``: serialized bytes (the fast path: decoded once, as ``LiteLogsRequest``),
    a ``LiteLogsRequest``, or an ``ExportLogsServiceRequest`` (re-encoded first).
    """
    if isinstance(request, (bytes, bytearray, memoryview)):
        request = LiteLogsRequest.FromString(bytes(request))
    elif not isinstance(request, LiteLogsRequest):
        request = LiteLogsRequest.FromString(request.SerializeToString())
    out = Encoded()
    body = out.body
    documents = out.documents
    positions = out.positions
    clock = _Clock()
    fallback_ns = received_ns or time.time_ns()
    dumps = orjson.dumps
    blake2b = hashlib.blake2b
    for r_index, rl in enumerate(request.resource_logs):
        resource_fields = _resource_fields(rl.resource)
        for s_index, sl in enumerate(rl.scope_logs):
            scope = sl.scope
            base = dict(resource_fields)
            if scope.name or scope.version:
                base["scope"] = {k: v for k, v in (("name", scope.name), ("version", scope.version)) if v}
            for l_index, record in enumerate(sl.log_records):
                doc, day = _document(base, record, scope.name, clock, fallback_ns)
                source = dumps(doc, option=orjson.OPT_SORT_KEYS)  # stable bytes, so a stable _id
                doc_id = blake2b(source, digest_size=16).hexdigest()
                index = f"{prefix}-{day}"
                body += b'{"create":{"_index":"%s","_id":"%s"}}\n' % (index.encode(), doc_id.encode())
                body += source
                body += b"\n"
                documents.append((index, doc_id, source))
                positions.append((r_index, s_index, l_index))
    return out
