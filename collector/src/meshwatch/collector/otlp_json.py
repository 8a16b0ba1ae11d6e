"""OTLP/JSON → protobuf message, per the OTLP spec's JSON encoding.

Differences from protobuf's canonical JSON that the spec requires: trace and span
ids are hex strings (not base64); enums are integers (protobuf's parser takes those);
field names are lowerCamelCase, and receivers also accept the original snake_case
(protobuf's parser takes both); unknown fields are ignored.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from google.protobuf import json_format

from .signals import REQUEST_TYPES, Signal

__all__ = ["parse_json_request", "response_json"]

_ID_KEYS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


def _fix_ids(node: Any) -> None:
    """Turn hex ids into the base64 protobuf's JSON parser expects, in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                if value == "":
                    continue
                try:
                    raw = bytes.fromhex(value)
                except ValueError:
                    raise ValueError(f"{key} {value!r} is not a hex string") from None
                # A wrong length is not a decoding error: the receiver refuses just that span
                # or log record (``_validate``), as it does for protobuf.
                node[key] = base64.b64encode(raw).decode()
            elif isinstance(value, dict | list):
                _fix_ids(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                _fix_ids(item)


def parse_json_request(signal: Signal, body: bytes) -> Any:
    """Parse an OTLP/JSON body; raises ``ValueError`` with what was wrong."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    _fix_ids(data)
    message = REQUEST_TYPES[signal]()
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except (json_format.ParseError, binascii.Error) as exc:
        raise ValueError(f"not an OTLP/JSON {signal} request: {exc}") from None
    return message


def response_json(message: Any) -> bytes:
    """An export response or a google.rpc.Status as OTLP/JSON (lowerCamelCase, ints for enums)."""
    return json_format.MessageToJson(message, indent=None, use_integers_for_enums=True).encode()
