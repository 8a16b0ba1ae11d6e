"""A cheaper SDK ``Span``: same class hierarchy, same data, less work per attribute.

Why: on a bare FastAPI ``GET /hello`` the SDK's ``Span`` was the largest part of
meshwatch's overhead. Every attribute goes through ``BoundedAttributes``, whose
``_clean_attribute_value`` walks the whole mapping with ``isinstance`` checks
against the ``Sequence``/``Mapping`` ABCs (slow in Python) under a second lock,
even though HTTP instrumentation sets nothing but short strings and ints. Each
span also allocated two ``BoundedList``s (with a lock each) for events and links
it almost never gets, and ``end()`` paid for a keyword-heavy ``ReadableSpan`` copy.

``MeshwatchSpan`` *is* an ``opentelemetry.sdk.trace.Span`` (and so a
``ReadableSpan``), so every SDK processor, exporter and contrib instrumentor works
unchanged. What it changes:

* attributes whose key is a non-empty ``str`` and whose value is exactly a
  ``str`` within the length limit, ``bool``, ``int``, ``float``, ``bytes`` or
  ``None`` are stored without re-validation; anything else (sequences, mappings,
  subclasses, over-long strings, bad keys) takes the SDK's own path, so it is
  cleaned, truncated or rejected with the SDK's warnings exactly as before;
* the count limit (``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT``) is enforced the same way
  (oldest attribute evicted, ``dropped`` counted);
* the span and its attributes share one lock (the SDK takes two per
  ``set_attribute``); every mutation still happens under it;
* events and links lists are created on first use (an empty tuple until then);
* the ``ReadableSpan`` handed to ``on_end`` is built without the keyword call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from random import getrandbits
from time import time_ns
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes, _clean_attribute_value
from opentelemetry.sdk.trace import EventBase, ReadableSpan, Span, SpanLimits, Tracer, TracerProvider
from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util import types

from ._traces import MeshwatchSpanProcessor, SwitchableSampler

__all__ = ["UNSET_STATUS", "FastAttributes", "MeshwatchSpan", "MeshwatchTracer", "MeshwatchTracerProvider"]

#: The SDK's own logger, so its warnings ("Setting attribute on ended span.", …) read and filter the same.
_sdk_logger = logging.getLogger("opentelemetry.sdk.trace")
_attributes_logger = logging.getLogger("opentelemetry.attributes")

_PLAIN = frozenset({bool, int, float, bytes, type(None)})
_PLAIN_OR_STR = _PLAIN | {str}
_STR = frozenset({str})
#: Every span starts with this one object, so the encoder recognises an unset status by identity.
UNSET_STATUS = Status(StatusCode.UNSET)
_INTERNAL = SpanKind.INTERNAL
_RANDOM = trace_api.TraceFlags.RANDOM_TRACE_ID
#: TraceFlags by sampled + 2 * random_trace_id.
_FLAGS = tuple(trace_api.TraceFlags(flags) for flags in (0, 1, _RANDOM, 1 | _RANDOM))
_RECORD_ONLY = Decision.RECORD_ONLY
_RECORD_AND_SAMPLE = Decision.RECORD_AND_SAMPLE
#: SpanContext is a tuple: (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid).
_TRACE_ID, _TRACE_FLAGS, _IS_VALID = 0, 3, 5
_SpanContext = trace_api.SpanContext
_NO_STATE = DEFAULT_TRACE_STATE
_new_tuple = tuple.__new__
_new_readable = object.__new__
_get_current_span = trace_api.get_current_span


class FastAttributes(BoundedAttributes):
    """``BoundedAttributes`` that store already-valid primitives without re-cleaning them.

    ``lock`` is the owning span's lock: ``_put`` and ``_put_all`` expect the caller
    to hold it (the span does); the public mutators take it themselves.
    """

    def __init__(
        self,
        maxlen: int | None,
        max_value_len: int | None,
        lock: Any,
        attributes: types.Attributes = None,
    ) -> None:
        # The state BoundedAttributes.__init__ sets, without its validation pass.
        self._dict: dict[str, types.AnyValue] = {}
        self.maxlen = maxlen
        self.dropped = 0
        self.max_value_len = max_value_len
        self._lock = lock
        self._immutable = False
        if attributes:
            self._put_all(attributes)  # not shared yet: no lock needed

    def _put(self, key: str, value: types.AnyValue) -> None:
        """Set one attribute (``set_attribute``); the caller holds ``self._lock``."""
        if self._immutable:
            raise TypeError("Cannot mutate immutable BoundedAttributes")
        maxlen = self.maxlen
        kind = type(value)
        if (
            maxlen != 0
            and type(key) is str
            and key
            and (kind in _PLAIN or (kind is str and (self.max_value_len is None or len(value) <= self.max_value_len)))
        ):
            d = self._dict
            if key in d:
                del d[key]  # re-inserted at the end, as the SDK does
            elif maxlen is not None and len(d) >= maxlen:
                self._evict_oldest()
            d[key] = value
            return
        # BoundedAttributes.__setitem__'s checks, for everything else.
        if maxlen == 0:
            self.dropped += 1
            return
        if not key or not isinstance(key, str):
            _attributes_logger.warning(
                "invalid key `%s`. must be non-empty string. Dropping key from attributes.",
                key,
            )
            self.dropped += 1
            return
        self._setitem_locked(key, _clean_attribute_value(value, self.max_value_len))

    def _put_all(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """Set many attributes (``set_attributes``, start); the caller holds ``self._lock``."""
        if self._immutable:
            raise TypeError("Cannot mutate immutable BoundedAttributes")
        maxlen = self.maxlen
        if maxlen == 0:
            self.dropped += len(attributes)
            return
        limit = self.max_value_len
        d = self._dict
        if (
            limit is None
            and _STR.issuperset(map(type, attributes))
            and "" not in attributes
            and _PLAIN_OR_STR.issuperset(map(type, attributes.values()))
        ):
            # Every key a non-empty str, every value a plain type (checked in C). When nothing
            # can be evicted, the SDK's insert-one-by-one (re-set keys move to the end) is a
            # delete of the re-set keys and one dict.update.
            overlap = d.keys() & attributes.keys()
            if maxlen is None or len(d) + len(attributes) - len(overlap) <= maxlen:
                if overlap:
                    attributes = dict(
                        attributes
                    )  # it may be a view of this very dict (set_attributes(span.attributes))
                    for key in overlap:
                        del d[key]
                d.update(attributes)
                return
        items = list(attributes.items())  # a snapshot: ``attributes`` may be a view of this very dict
        for key, value in items:
            kind = type(value)
            if not (
                type(key) is str
                and key
                and (kind in _PLAIN or (kind is str and (limit is None or len(value) <= limit)))
            ):
                # BoundedAttributes._set_items as is: clean the whole mapping, then insert.
                cleaned = _clean_attribute_value(attributes, limit)
                self.dropped += len(attributes) - len(cleaned)
                for clean_key, clean_value in cleaned.items():
                    self._setitem_locked(clean_key, clean_value)
                return
        for key, value in items:
            if key in d:
                del d[key]
            elif maxlen is not None and len(d) >= maxlen:
                self._evict_oldest()
            d[key] = value

    def _evict_oldest(self) -> None:
        _attributes_logger.warning(
            "Attributes dict is full. Dropping the oldest key-value pair from attributes to make space "
            "for the new key-value pair."
        )
        del self._dict[next(iter(self._dict))]
        self.dropped += 1

    # --- the MutableMapping interface, for code that uses it directly ------------------------

    def __setitem__(self, key: str, value: types.AnyValue) -> None:
        with self._lock:
            self._put(key, value)

    def _set_items(self, attributes: Mapping[str, types.AnyValue]) -> None:
        with self._lock:
            self._put_all(attributes)

    def __contains__(self, key: object) -> bool:
        return key in self._dict

    def get(self, key: str, default: Any = None) -> Any:
        return self._dict.get(key, default)

    def __iter__(self) -> Iterator[str]:
        # No lock: it is the span's, which may be held by the caller (span.set_attributes(span.attributes));
        # list() of a dict of str keys runs in C without releasing the GIL, so it is a consistent snapshot.
        if self._immutable:
            return iter(self._dict)
        return iter(list(self._dict))


class MeshwatchSpan(Span):
    """An SDK ``Span`` with cheaper attribute handling; see the module docstring."""

    # Span.__new__ only refuses the bare Span class; this one is made by MeshwatchTracer.

    def __init__(  # noqa: PLR0917 - the SDK Span's signature
        self,
        name: str,
        context: trace_api.SpanContext,
        parent: trace_api.SpanContext | None = None,
        sampler: Any = None,
        trace_config: None = None,
        resource: Any = None,
        attributes: types.Attributes = None,
        events: Sequence[Any] | None = None,
        links: Sequence[Link] = (),
        kind: SpanKind = _INTERNAL,
        span_processor: Any = None,
        instrumentation_info: Any = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        limits: SpanLimits | None = None,
        instrumentation_scope: Any = None,
        *,
        record_end_metrics: Any = None,
    ) -> None:
        if resource is None or limits is None or span_processor is None or events or links:
            # Unusual construction (not through MeshwatchTracer's fast path): the SDK's own __init__.
            from opentelemetry.sdk.trace import SpanProcessor
            from opentelemetry.sdk.trace import _UnsetLimits as unset_limits

            super().__init__(
                name,
                context,
                parent,
                sampler,
                trace_config,
                resource,
                None,
                events,
                links,
                kind,
                span_processor if span_processor is not None else SpanProcessor(),
                instrumentation_info,
                record_exception,
                set_status_on_exception,
                limits if limits is not None else unset_limits,
                instrumentation_scope,
                record_end_metrics=record_end_metrics,
            )
            limits = self._limits
            self._attributes = FastAttributes(
                limits.max_span_attributes, limits.max_span_attribute_length, self._lock, attributes
            )
            return
        # ReadableSpan's fields
        self._name = name
        self._context = context
        self._kind = kind
        self._instrumentation_info = instrumentation_info
        self._instrumentation_scope = instrumentation_scope
        self._parent = parent
        self._start_time: int | None = None
        self._end_time: int | None = None
        self._resource = resource
        self._status = UNSET_STATUS
        # Span's fields
        self._sampler = sampler
        self._trace_config = trace_config
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception
        self._span_processor = span_processor
        self._limits = limits
        self._lock = lock = threading.Lock()
        self._attributes = FastAttributes(
            limits.max_span_attributes, limits.max_span_attribute_length, lock, attributes
        )
        self._events: Any = ()  # a BoundedList from the first add_event
        self._links: Any = ()
        self._record_end_metrics = record_end_metrics

    def get_span_context(self) -> trace_api.SpanContext:
        return self._context  # the SDK's goes through typing.cast, a Python call

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        with self._lock:
            if self._end_time is not None:
                _sdk_logger.warning("Setting attribute on ended span.")
                return
            self._attributes._put_all(attributes)  # type: ignore[attr-defined]

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        with self._lock:
            if self._end_time is not None:
                _sdk_logger.warning("Setting attribute on ended span.")
                return
            self._attributes._put(key, value)  # type: ignore[attr-defined]

    def _add_event(self, event: EventBase) -> None:
        with self._lock:
            if self._end_time is None:
                if type(self._events) is tuple:
                    self._events = BoundedList(self._limits.max_events)
                self._events.append(event)
                return
        _sdk_logger.warning("Tried calling %s on an ended span.", "_add_event")

    def _add_link(self, link: Link) -> None:
        with self._lock:
            if self._end_time is None:
                if type(self._links) is tuple:
                    self._links = BoundedList(self._limits.max_links)
                self._links.append(link)
                return
        _sdk_logger.warning("Tried calling %s on an ended span.", "_add_link")

    def _readable_span(self) -> ReadableSpan:
        readable = _new_readable(ReadableSpan)
        readable.__dict__.update(
            _name=self._name,
            _context=self._context,
            _kind=self._kind,
            _instrumentation_info=self._instrumentation_info,
            _instrumentation_scope=self._instrumentation_scope,
            _parent=self._parent,
            _start_time=self._start_time,
            _end_time=self._end_time,
            _attributes=self._attributes,
            _events=self._events,
            _links=self._links,
            _resource=self._resource,
            _status=self._status,
        )
        return readable

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._start_time is None:
                raise RuntimeError("Calling end() on a not started span.")
            if self._end_time is not None:
                _sdk_logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
            self._attributes._immutable = True  # type: ignore[attr-defined]
        if self._record_end_metrics is not None:
            self._record_end_metrics()
        processor = self._span_processor
        # meshwatch's processor says when none of its processors listens; any other is always told
        if not isinstance(processor, MeshwatchSpanProcessor) or processor.needs_on_ending:
            processor._on_ending(self)
        processor.on_end(self._readable_span())


class MeshwatchTracer(Tracer):
    """The SDK ``Tracer``, making ``MeshwatchSpan``s; sampling, ids and processors are unchanged."""

    def start_span(  # noqa: PLR0917 - the Tracer interface
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = _INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace_api.Span:
        # The SDK's Tracer.start_span, step for step, with MeshwatchSpan in place of _Span;
        # the defaults (random ids, no SDK self-metrics) are decided inline, the sampling by
        # SwitchableSampler.decide; reading SpanContext fields by position (C) not by property (Python).
        links = links or ()
        parent = _get_current_span(context).get_span_context()
        if parent is not None and not isinstance(parent, trace_api.SpanContext):
            raise TypeError("parent_span_context must be a SpanContext or None.")
        if not self._tracer_config.is_enabled:
            return trace_api.NonRecordingSpan(context=parent)
        if parent is None or not parent[_IS_VALID]:
            parent = None
        ids = self.id_generator
        random_ids = type(ids) is RandomIdGenerator
        if parent is not None:
            trace_id = parent[_TRACE_ID]
            random_trace_id = parent[_TRACE_FLAGS] & _RANDOM
        elif random_ids:
            trace_id = getrandbits(128)
            while not trace_id:
                trace_id = getrandbits(128)
            random_trace_id = True
        else:
            trace_id = ids.generate_trace_id()
            random_trace_id = ids.is_trace_id_random()
        sampler = self.sampler
        if isinstance(sampler, SwitchableSampler):
            # meshwatch's one decision, given the parent already looked up (DROP: not recorded)
            decision, attributes, trace_state = sampler.decide(parent, kind, context, trace_id, name, attributes, links)
        else:
            result = sampler.should_sample(context, trace_id, name, kind, attributes, links)
            decision, attributes, trace_state = result.decision, result.attributes, result.trace_state
        sampled = decision is _RECORD_AND_SAMPLE
        trace_flags = _FLAGS[sampled + 2 * bool(random_trace_id)]
        if random_ids:
            span_id = getrandbits(64)
            while not span_id:
                span_id = getrandbits(64)
        else:
            span_id = ids.generate_span_id()
        # SpanContext.__new__ minus its range checks: both ids are non-zero and in range here.
        span_context = _new_tuple(
            _SpanContext,
            (trace_id, span_id, False, trace_flags, _NO_STATE if trace_state is None else trace_state, True),
        )
        metrics = self._tracer_metrics
        record_end_metrics = None if type(metrics) is NoOpTracerMetrics else metrics.start_span(parent, decision)
        if decision is not _RECORD_ONLY and not sampled:
            return trace_api.NonRecordingSpan(context=span_context)
        span = MeshwatchSpan(
            name,
            span_context,
            parent,
            sampler,
            None,
            self.resource,
            attributes,
            None,
            links,
            kind,
            self.span_processor,
            self.instrumentation_info,
            record_exception,
            set_status_on_exception,
            self._span_limits,
            self._instrumentation_scope,
            record_end_metrics=record_end_metrics,
        )
        # Span.start() without its already-started check (the span is new) and its lock (not yet shared).
        span._start_time = start_time if start_time is not None else time_ns()
        self.span_processor.on_start(span, parent_context=context)
        return span


class MeshwatchTracerProvider(TracerProvider):
    """The SDK ``TracerProvider`` whose tracers make ``MeshwatchSpan``s."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace_api.Tracer:
        tracer = super().get_tracer(*args, **kwargs)
        if type(tracer) is Tracer:
            # Same object and state (the provider keeps it per scope); only start_span differs.
            tracer.__class__ = MeshwatchTracer
        return tracer
