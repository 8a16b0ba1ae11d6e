"""Cutting one OTLP request into one request per backend, by trace id or by service.

Every item keeps its resource and scope. A request whose items all go to one backend
is passed on as the bytes that came in (nothing decoded into parts, nothing re-encoded),
which is the common case for an SDK's batch routed by service and for small traces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from ...batch import Batch
from ...signals import REQUEST_TYPES, Signal

__all__ = ["RoutingKey", "split", "service_of"]

RoutingKey = Literal["traceID", "service"]

#: (resource list, scope list, item list) field names of each request type.
_FIELDS: dict[Signal, tuple[str, str, str]] = {
    Signal.TRACES: ("resource_spans", "scope_spans", "spans"),
    Signal.METRICS: ("resource_metrics", "scope_metrics", "metrics"),
    Signal.LOGS: ("resource_logs", "scope_logs", "log_records"),
}


def service_of(resource: Any) -> bytes:
    """The resource's ``service.name`` (b"" when it has none)."""
    for kv in resource.attributes:
        if kv.key == "service.name":
            return kv.value.string_value.encode()
    return b""


def split(batch: Batch, key: RoutingKey, owner: Callable[[bytes], str]) -> dict[str, Batch]:
    """``{backend: the part of batch it gets}``; ``owner(key bytes)`` is the ring's lookup.

    By ``traceID`` a span or log record goes where its trace id points (a log record
    without one goes by its service name, so those are spread by service rather than
    piled on one backend); by ``service`` a whole resource entry goes where its
    ``service.name`` points.
    """
    signal = batch.signal
    resources_field, scopes_field, items_field = _FIELDS[signal]
    request = batch.message
    by_trace = key == "traceID"
    owners: dict[bytes, str] = {}

    def lookup(k: bytes) -> str:
        found = owners.get(k)
        if found is None:
            found = owners[k] = owner(k)
        return found

    # First pass: where each item goes; most batches go to one backend and stop here.
    plan: list[tuple[Any, list[tuple[Any, list[str]]] | str]] = []
    destinations: set[str] = set()
    # getattr here and below: protobuf messages, by the field names of the signal.
    for rs in getattr(request, resources_field):
        service = service_of(rs.resource)
        if not by_trace:
            dest = lookup(service)
            destinations.add(dest)
            plan.append((rs, dest))
            continue
        scopes: list[tuple[Any, list[str]]] = []
        for ss in getattr(rs, scopes_field):
            dests = [lookup(item.trace_id or service) for item in getattr(ss, items_field)]
            destinations.update(dests)
            scopes.append((ss, dests))
        plan.append((rs, scopes))
    if len(destinations) <= 1:
        if not destinations:
            return {}
        return {destinations.pop(): batch}

    parts: dict[str, Any] = {}
    for rs, routed in plan:
        if isinstance(routed, str):
            getattr(_part(parts, routed, signal), resources_field).append(rs)
            continue
        copies: dict[str, Any] = {}  # this resource's copy in each backend's request
        for ss, dests in routed:
            scope_copies: dict[str, Any] = {}
            for item, dest in zip(getattr(ss, items_field), dests, strict=True):
                target = scope_copies.get(dest)
                if target is None:
                    resource_copy = copies.get(dest)
                    if resource_copy is None:
                        resource_copy = copies[dest] = getattr(_part(parts, dest, signal), resources_field).add()
                        resource_copy.resource.CopyFrom(rs.resource)
                        resource_copy.schema_url = rs.schema_url
                    target = scope_copies[dest] = getattr(resource_copy, scopes_field).add()
                    target.scope.CopyFrom(ss.scope)
                    target.schema_url = ss.schema_url
                getattr(target, items_field).append(item)
    return {dest: Batch.from_message(signal, message) for dest, message in parts.items()}


def _part(parts: dict[str, Any], dest: str, signal: Signal) -> Any:
    message = parts.get(dest)
    if message is None:
        message = parts[dest] = REQUEST_TYPES[signal]()
    return message
