"""An OTLP/HTTP error answer is shown as its message, not as raw protobuf bytes."""

from __future__ import annotations

import json

from google.rpc.status_pb2 import Status

from meshwatch._transport import error_text

MESSAGE = "this collector has no logs pipeline for this receiver"


def test_a_protobuf_status_shows_its_message() -> None:
    body = Status(code=3, message=MESSAGE).SerializeToString()
    assert error_text(body, "application/x-protobuf") == MESSAGE
    # positive control: the raw bytes are what a person saw before
    assert body[:200].decode("utf-8", "replace") != MESSAGE


def test_json_and_text_bodies() -> None:
    body = json.dumps({"code": 3, "message": MESSAGE}).encode()
    assert error_text(body, "application/json; charset=utf-8") == MESSAGE
    assert error_text(b"bad gateway\r\n", "text/plain") == "bad gateway"
    shown = error_text(b"\x08\x03\x12\x05oops!", "application/octet-stream")  # not said to be protobuf
    assert shown.isprintable() and shown.endswith("oops!")
