"""A ``Batch``: one OTLP export request travelling through the pipeline.

It carries the request both as the bytes that arrived and as the decoded
protobuf message. The receiver decodes once (that is also how malformed input is
caught); processors that only read work on ``message``; a processor that changes
the message calls ``mark_modified()`` and the bytes are re-encoded once, lazily,
when an exporter or the durable queue asks for ``raw``. Data that no processor
touches leaves the collector as the very bytes that came in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .signals import REQUEST_TYPES, Signal, count_items

__all__ = ["Batch"]


@dataclass(eq=False)
class Batch:
    signal: Signal
    _raw: bytes | None = None
    _message: Any = None
    _items: int | None = None
    received_at: float = field(default_factory=time.time)
    #: Facts about where the batch came from (receiver id, transport, client address).
    context: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_bytes(cls, signal: Signal, raw: bytes, **context: Any) -> Batch:
        """Decode (and so validate) a serialized request; raises ``google.protobuf.message.DecodeError``."""
        message = REQUEST_TYPES[signal]()
        message.ParseFromString(raw)
        return cls(signal, raw, message, context=context)

    @classmethod
    def from_message(cls, signal: Signal, message: Any, **context: Any) -> Batch:
        return cls(signal, None, message, context=context)

    @property
    def message(self) -> Any:
        if self._message is None:
            message = REQUEST_TYPES[self.signal]()
            message.ParseFromString(self._raw or b"")
            self._message = message
        return self._message

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = self._message.SerializeToString()
        return self._raw

    @property
    def unmodified_raw(self) -> bytes | None:
        """The bytes ``message`` was decoded from, while both exist and no one changed it; else None."""
        return self._raw if self._raw is not None and self._message is not None else None

    @property
    def nbytes(self) -> int:
        """Size of the serialized request (without encoding it when only the message is at hand)."""
        return len(self._raw) if self._raw is not None else self.message.ByteSize()

    @property
    def items(self) -> int:
        """Number of spans, metric points or log records."""
        if self._items is None:
            self._items = count_items(self.signal, self.message)
        return self._items

    def mark_modified(self) -> None:
        """Call after changing ``message`` in place: the bytes and count are recomputed."""
        self.message  # noqa: B018 - make sure the decoded form exists before dropping the bytes
        self._raw = None
        self._items = None
