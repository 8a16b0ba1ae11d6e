"""Where the ``tail_sampling`` processor keeps undecided traces: as bytes, counted in bytes.

A span waiting for its trace's decision is kept as its own serialized bytes (with
its OTLP field tag), not as a decoded message: a decoded upb span keeps the arena of
the whole request it came in alive, several times its wire size, while bytes cost
their length plus a small fixed overhead and free exactly when the trace is decided.
Resources and scopes are kept once per distinct value (interned), not once per span.

A trace's spans are grouped by (resource, scope) in arrival order, as the Go
processor keeps one resource entry per arrival, and turned back into an
``ExportTraceServiceRequest`` by concatenating bytes: deciding to keep a trace never
re-encodes a span, and several kept traces are one request by concatenation.

``held_bytes`` is what the memory bound counts: the span bytes plus the measured
per-span and per-trace overheads of the Python objects holding them
(``SPAN_OVERHEAD``, ``TRACE_OVERHEAD``; the benchmark checks them against the RSS).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["Trace", "TraceStore", "DecisionCache", "SPAN_OVERHEAD", "TRACE_OVERHEAD", "length_prefixed", "request_of"]

#: A bytes object's header (33 B, rounded by the allocator) and its slot in a list.
SPAN_OVERHEAD = 48
#: The trace record, its slot in the ordered index, its id and its group list.
TRACE_OVERHEAD = 400


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: Field 2 length prefixes for short payloads (most spans): one table lookup instead of a varint.
_SPAN_PREFIX = [b"\x12" + _varint(n) for n in range(16384)]


def length_prefixed(tag: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field: tag byte, varint length, payload."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def span_field(raw: bytes) -> bytes:
    """A serialized span as ``ScopeSpans.spans`` (field 2) entry."""
    n = len(raw)
    return (_SPAN_PREFIX[n] if n < 16384 else b"\x12" + _varint(n)) + raw


class Group:
    """The spans of one trace that arrived under one resource and scope, in order."""

    __slots__ = ("resource", "scope", "spans")

    def __init__(self, resource: bytes, scope: bytes) -> None:
        #: ``ResourceSpans`` fields other than scope_spans (resource, schema_url), serialized.
        self.resource = resource
        #: ``ScopeSpans`` fields other than spans (scope, schema_url), serialized.
        self.scope = scope
        #: Each span with its field tag and length (``span_field``).
        self.spans: list[bytes] = []


class Trace:
    """One undecided trace."""

    __slots__ = (
        "earliest",
        "first_seen",
        "groups",
        "last_seen",
        "latest",
        "nbytes",
        "root_seen",
        "span_count",
        "trace_id",
    )

    def __init__(self, trace_id: bytes, now: float) -> None:
        self.trace_id = trace_id
        self.groups: list[Group] = []
        self.span_count = 0
        #: Span bytes plus overheads (what ``TraceStore.held_bytes`` counts for it).
        self.nbytes = TRACE_OVERHEAD
        self.first_seen = now
        self.last_seen = now
        self.root_seen = False
        #: Earliest span start and latest span end (ns); -1: some span had a zero timestamp.
        self.earliest = 0
        self.latest = 0

    def add(self, resource: bytes, scope: bytes, spans: list[bytes]) -> int:
        """Append spans (already ``span_field``-encoded); returns the bytes added."""
        groups = self.groups
        if groups and groups[-1].resource is resource and groups[-1].scope is scope:
            group = groups[-1]
        else:
            group = Group(resource, scope)
            groups.append(group)
        group.spans.extend(spans)
        added = sum(map(len, spans)) + SPAN_OVERHEAD * len(spans)
        self.span_count += len(spans)
        self.nbytes += added
        return added

    def widen(self, earliest: int, latest: int) -> None:
        """Fold a batch's span time range in (``earliest`` -1: a zero timestamp was seen)."""
        if self.earliest < 0:
            return
        if earliest < 0:
            self.earliest = -1
        elif self.span_count == 0 or not self.latest:
            self.earliest, self.latest = earliest, latest
        else:
            self.earliest = min(self.earliest, earliest)
            self.latest = max(self.latest, latest)

    def bounds(self) -> tuple[int, int] | None:
        """(earliest start, latest end), None when a zero timestamp makes Go's running walk differ."""
        return None if self.earliest < 0 else (self.earliest, self.latest)

    def wire(self) -> bytes:
        """The trace as a serialized ``ExportTraceServiceRequest``."""
        return b"".join(request_of(group.resource, group.scope, group.spans) for group in self.groups)


def request_of(resource: bytes, scope: bytes, spans: list[bytes]) -> bytes:
    """``resource_spans`` entry (field 1 of the request) with one scope entry holding ``spans``."""
    scope_spans = length_prefixed(0x12, scope + b"".join(spans))
    return length_prefixed(0x0A, resource + scope_spans)


class TraceStore:
    """Undecided traces in arrival order (the oldest is the next to be due or evicted)."""

    def __init__(self) -> None:
        self.traces: OrderedDict[bytes, Trace] = OrderedDict()
        self.held_bytes = 0
        self._interned: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return len(self.traces)

    def intern(self, value: bytes) -> bytes:
        """One shared object per distinct resource / scope value (bounded)."""
        known = self._interned.get(value)
        if known is None:
            if len(self._interned) >= 4096:
                self._interned.clear()
            known = self._interned[value] = value
        return known

    def get(self, trace_id: bytes) -> Trace | None:
        return self.traces.get(trace_id)

    def create(self, trace_id: bytes, now: float) -> Trace:
        trace = self.traces[trace_id] = Trace(trace_id, now)
        self.held_bytes += trace.nbytes
        return trace

    def grew(self, added: int) -> None:
        self.held_bytes += added

    def oldest(self) -> Trace | None:
        for trace in self.traces.values():
            return trace
        return None

    def pop(self, trace_id: bytes) -> Trace | None:
        trace = self.traces.pop(trace_id, None)
        if trace is not None:
            self.held_bytes -= trace.nbytes
        return trace

    def pop_oldest(self) -> Trace:
        _, trace = self.traces.popitem(last=False)
        self.held_bytes -= trace.nbytes
        return trace


class DecisionCache:
    """Recently decided trace ids (LRU, as the Go processor's caches): late spans follow them."""

    def __init__(self, sampled_size: int, not_sampled_size: int) -> None:
        self._sizes = {True: sampled_size, False: not_sampled_size}
        self._ids: dict[bool, OrderedDict[bytes, None]] = {True: OrderedDict(), False: OrderedDict()}

    def get(self, trace_id: bytes) -> bool | None:
        for sampled in (True, False):
            ids = self._ids[sampled]
            if trace_id in ids:
                ids.move_to_end(trace_id)
                return sampled
        return None

    def put(self, trace_id: bytes, sampled: bool) -> None:
        size = self._sizes[sampled]
        if not size:
            return
        ids = self._ids[sampled]
        ids[trace_id] = None
        ids.move_to_end(trace_id)
        while len(ids) > size:
            ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids[True]) + len(self._ids[False])


def resource_prefix(rs: Any) -> bytes:
    """The ``ResourceSpans`` fields kept per group: resource (1) and schema_url (3)."""
    out = length_prefixed(0x0A, rs.resource.SerializeToString())
    if rs.schema_url:
        out += length_prefixed(0x1A, rs.schema_url.encode())
    return out


def scope_prefix(ss: Any) -> bytes:
    """The ``ScopeSpans`` fields kept per group: scope (1) and schema_url (3)."""
    out = length_prefixed(0x0A, ss.scope.SerializeToString())
    if ss.schema_url:
        out += length_prefixed(0x1A, ss.schema_url.encode())
    return out
