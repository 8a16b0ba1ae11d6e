"""One queued record and its on-disk framing.

A record on disk is a 20-byte header, then the payload:
``length u32 | crc32 u32 | items u32 | enqueued_at f64`` (little endian). The CRC
covers ``items``, ``enqueued_at`` and the payload, so a torn write or a flipped bit
anywhere but in the length is caught; a bad length is caught because the CRC of the
wrong span of bytes does not match (or the record runs past the end of the file).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

__all__ = ["Record", "HEADER", "frame_header", "parse_header", "payload_crc"]

HEADER = struct.Struct("<IIId")
_META = struct.Struct("<Id")


@dataclass(slots=True)
class Record:
    """A queued request: where it is, how many items it carries, when it was queued."""

    segment: int
    offset: int
    length: int  # payload bytes
    items: int
    enqueued_at: float
    payload: bytes | None = None
    done: bool = False

    @property
    def size(self) -> int:
        """Bytes the record takes in the queue (header included)."""
        return HEADER.size + self.length


def payload_crc(items: int, enqueued_at: float, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(_META.pack(items, enqueued_at)))


def frame_header(payload: bytes, items: int, enqueued_at: float) -> bytes:
    return HEADER.pack(len(payload), payload_crc(items, enqueued_at, payload), items, enqueued_at)


def parse_header(data: bytes | memoryview, offset: int = 0) -> tuple[int, int, int, float]:
    """``(length, crc, items, enqueued_at)`` of the header at ``offset``."""
    return HEADER.unpack_from(data, offset)
