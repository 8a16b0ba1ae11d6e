"""The partition of a keyed record, as the Go collector computes it.

The contrib exporter's default partitioner (``record_partitioner.sticky_key.hasher:
sarama_compat``) hashes the key with 32-bit FNV-1a, reads the hash as a signed int32,
takes the remainder by the partition count (Go's ``%`` truncates toward zero) and drops
the sign. librdkafka's own partitioners differ, so the exporter names the partition itself.
"""

from __future__ import annotations

__all__ = ["fnv1a_32", "sarama_partition"]

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def sarama_partition(key: bytes, partitions: int) -> int:
    """``abs(int32(fnv1a(key)) % partitions)`` with Go's truncated remainder."""
    if partitions <= 0:
        raise ValueError("a topic has at least one partition")
    signed = fnv1a_32(key)
    if signed >= 1 << 31:
        signed -= 1 << 32
    remainder = abs(signed) % partitions  # truncation toward zero keeps |remainder|
    return remainder
