"""A consistent-hash ring: the same key always maps to the same member while the members stay.

Each member owns ``points`` positions on a 64-bit circle (BLAKE2b of ``"<member>#<i>"``);
a key belongs to the first position at or after its own hash. Adding a member takes
about ``1/n`` of the keys, all of them to the new member; removing one moves only the
keys it owned. The ring depends only on the set of members, never on the order they
were given in, so two load balancers with the same backends route alike.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

__all__ = ["HashRing", "key_hash"]

#: Positions per member: with 200 the largest member's share of keys stays within ~±10 % of 1/n.
DEFAULT_POINTS = 200


def key_hash(key: bytes) -> int:
    """A 64-bit position for ``key`` (trace ids are random, service names are not: hash both)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


class HashRing:
    """Immutable; build a new ring when the members change."""

    def __init__(self, members: Iterable[str], points: int = DEFAULT_POINTS) -> None:
        self.members: frozenset[str] = frozenset(members)
        positions = sorted(
            (key_hash(f"{member}#{index}".encode()), member) for member in self.members for index in range(points)
        )
        self._hashes = [position for position, _ in positions]
        self._owners = [member for _, member in positions]

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, member: object) -> bool:
        return member in self.members

    def owner(self, key: bytes) -> str:
        """The member ``key`` belongs to; ``LookupError`` on an empty ring."""
        if not self._hashes:
            raise LookupError("the ring has no members")
        index = bisect.bisect_left(self._hashes, key_hash(key))
        return self._owners[index % len(self._owners)]
