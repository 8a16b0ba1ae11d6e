"""The TracerProvider pieces: propagators, sampler, and meshwatch's span processor.

The span processor is the provider's *only* active processor (no
``SynchronousMultiSpanProcessor`` loop per span): ``on_end`` hands the span to
the bounded batcher, plus any listener (the pytest capture) or processor a user
added with ``add_span_processor``. Redaction runs on the export thread.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import sampling as sdk_sampling
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import SpanContext, TraceState
from opentelemetry.util.types import Attributes

from ._batch import BoundedBatcher
from ._config import ConfigError
from ._red import RedMetrics
from ._redact import Redactor

__all__ = [
    "Decided",
    "MeshwatchSpanProcessor",
    "SwitchableSampler",
    "build_propagator",
    "build_sampler",
    "redact_spans",
]

_logger = logging.getLogger("meshwatch")


def _propagator(name: str) -> TextMapPropagator | None:
    if name == "tracecontext":
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        return TraceContextTextMapPropagator()
    if name == "baggage":
        from opentelemetry.baggage.propagation import W3CBaggagePropagator

        return W3CBaggagePropagator()
    if name == "b3":
        from opentelemetry.propagators.b3 import B3SingleFormat

        return B3SingleFormat()
    if name == "b3multi":
        from opentelemetry.propagators.b3 import B3MultiFormat

        return B3MultiFormat()
    if name == "jaeger":
        from opentelemetry.propagators.jaeger import JaegerPropagator

        return JaegerPropagator()
    if name == "none":
        return None
    # Anything else a package registers under the standard entry point (xray, ottrace, …).
    from importlib.metadata import entry_points

    for entry_point in entry_points(group="opentelemetry_propagator", name=name):
        return entry_point.load()()
    raise ConfigError(
        f"propagator {name!r} is unknown; use tracecontext, baggage, b3, b3multi, jaeger or none "
        "(or install a package providing it)"
    )


def build_propagator(names: Sequence[str]) -> CompositePropagator:
    """Extract tries each format; inject writes all of them, so old and new services share traces."""
    propagators = [p for p in (_propagator(n.strip().lower()) for n in names) if p is not None]
    return CompositePropagator(propagators)


def build_sampler(name: str, rate: float) -> sdk_sampling.Sampler:
    if name == "always_on":
        return sdk_sampling.ALWAYS_ON
    if name == "always_off":
        return sdk_sampling.ALWAYS_OFF
    if name == "traceidratio":
        return sdk_sampling.TraceIdRatioBased(rate)
    if name == "parentbased_always_on":
        return sdk_sampling.ParentBased(sdk_sampling.ALWAYS_ON)
    if name == "parentbased_always_off":
        return sdk_sampling.ParentBased(sdk_sampling.ALWAYS_OFF)
    # The default: follow the caller's decision, keep ``rate`` of new traces.
    root = sdk_sampling.ALWAYS_ON if rate >= 1.0 else sdk_sampling.TraceIdRatioBased(rate)
    return sdk_sampling.ParentBased(root)


_DROP = sdk_sampling.Decision.DROP
_RECORD_ONLY = sdk_sampling.Decision.RECORD_ONLY
_NOT_RECORDED = sdk_sampling.SamplingResult(_DROP)

#: Modules whose own calls, made outside any span, are a broker client's housekeeping.
_BROKER_CLIENTS = ("kombu.",)
#: How many frames up a root CLIENT span's caller is looked for (redis-py and its instrumentor sit in between).
_BROKER_FRAME_DEPTH = 48


def started_by_broker_client() -> bool:
    """True when a kombu frame is on the stack: the span is kombu polling or acknowledging for itself.

    An idle Celery worker with a Redis broker otherwise exported about 50 root Redis spans a
    minute (``BRPOP``, ``LLEN``, ``EVALSHA``, ``PUBLISH`` from kombu's event loop), each its
    own one-span trace. A task's or a producer's Redis calls have a parent span and are never
    looked at here. Only root CLIENT spans pay for the walk, and only once kombu is imported.
    """
    if "kombu" not in sys.modules:
        return False
    frame = sys._getframe(1)
    for _ in range(_BROKER_FRAME_DEPTH):
        if frame is None:
            return False
        if frame.f_globals.get("__name__", "").startswith(_BROKER_CLIENTS):
            return True
        frame = frame.f_back
    return False


#: What a span is given at its start: the decision (DROP: not recorded at all), its attributes, its trace state.
Decided = tuple[sdk_sampling.Decision, Attributes, "TraceState | None"]
_NOT_RECORDED_DECIDED: Decided = (_DROP, None, None)
#: SpanContext is a tuple: (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid).
_IS_REMOTE, _TRACE_FLAGS, _TRACE_STATE = 2, 3, 4


class SwitchableSampler(sdk_sampling.Sampler):
    """Tracers keep the sampler they were created with; this lets a second ``init()`` change it.

    Sampled or not, a span is always recorded with its start attributes (RED metrics
    count every request by method and route); unsampled spans are never exported.
    ``decide`` is the one place this is decided: meshwatch's tracer calls it with the
    parent it has already looked up, the SDK's tracer through ``should_sample``.
    """

    def __init__(self, inner: sdk_sampling.Sampler, *, broker_polling_spans: bool = False) -> None:
        self.inner = inner
        #: False: a root CLIENT span a broker client starts for itself is not recorded at all.
        self.broker_polling_spans = broker_polling_spans

    @property
    def inner(self) -> sdk_sampling.Sampler:
        return self._inner

    @inner.setter
    def inner(self, sampler: sdk_sampling.Sampler) -> None:
        self._inner = sampler
        #: Decisions of a ParentBased over fixed samplers (meshwatch's default at 100 %), by parent
        #: shape: the same result as the SDK's chain, with no delegate calls and one parent lookup.
        self._static = _static_decisions(sampler)

    @property
    def decides_without_delegate(self) -> bool:
        """True when ``decide`` reads the decision from the parent alone (no inner sampler call)."""
        return self._static is not None

    def decide(  # noqa: PLR0917 - the Sampler's arguments, with the parent already looked up
        self,
        parent: SpanContext | None,
        kind: SpanKind | None,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
    ) -> Decided:
        """The sampling decision for a span whose valid parent is ``parent`` (None for a root).

        DROP means not recorded at all (a broker client's own housekeeping, see
        ``started_by_broker_client``); the inner sampler's DROP becomes RECORD_ONLY
        with the start attributes kept (the SDK's samplers return none with a DROP).
        """
        if parent is None and kind is SpanKind.CLIENT and not self.broker_polling_spans and started_by_broker_client():
            return _NOT_RECORDED_DECIDED
        static = self._static
        if static is not None:
            if parent is None:
                decision, trace_state = static[0], None
            else:
                # by position: the SpanContext properties are Python calls
                decision = static[1 + 2 * (not parent[_IS_REMOTE]) + (not parent[_TRACE_FLAGS] & 1)]
                trace_state = parent[_TRACE_STATE]
            return (_RECORD_ONLY if decision is _DROP else decision), attributes, trace_state
        result = self._inner.should_sample(parent_context, trace_id, name, kind, attributes, links)
        if result.decision is _DROP:
            return _RECORD_ONLY, attributes, result.trace_state
        return result.decision, result.attributes, result.trace_state

    def should_sample(  # noqa: PLR0917 - the Sampler interface
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> sdk_sampling.SamplingResult:
        parent = get_current_span(parent_context).get_span_context()
        if parent is not None and not parent.is_valid:
            parent = None
        decision, kept, state = self.decide(parent, kind, parent_context, trace_id, name, attributes, links)
        if decision is _DROP:
            return _NOT_RECORDED
        return sdk_sampling.SamplingResult(decision, kept, state)

    def get_description(self) -> str:
        return f"meshwatch({self._inner.get_description()})"


def _static_decisions(sampler: sdk_sampling.Sampler) -> tuple[sdk_sampling.Decision, ...] | None:
    """Decisions of a ``ParentBased`` whose delegates are all fixed: root, remote sampled/not, local sampled/not."""
    if type(sampler) is not sdk_sampling.ParentBased:
        return None
    delegates = (
        sampler._root,
        sampler._remote_parent_sampled,
        sampler._remote_parent_not_sampled,
        sampler._local_parent_sampled,
        sampler._local_parent_not_sampled,
    )
    if any(type(d) is not sdk_sampling.StaticSampler for d in delegates):
        return None
    return tuple(d._decision for d in delegates)


class MeshwatchSpanProcessor(SpanProcessor):
    """Feeds RED metrics, then queues sampled spans for export and hands them to listeners.

    Supports ``TracerProvider.add_span_processor`` (those processors see every
    recording span, sampled or not, as the SDK's own multi-processor does).
    """

    def __init__(self, red: RedMetrics | None = None) -> None:
        self.red = red
        self.batcher: BoundedBatcher[ReadableSpan] | None = None
        self.listeners: list[Callable[[ReadableSpan], None]] = []
        self._processors: list[SpanProcessor] = []
        self._rebind()

    def _rebind(self) -> None:
        # on_start/on_end are the hot path: build them once from what is attached.
        sampled_targets: list[Callable[[ReadableSpan], None]] = []
        if self.batcher is not None:
            sampled_targets.append(self.batcher.add)
        sampled_targets.extend(self.listeners)
        red_end = self.red.on_end if self.red is not None else None
        others = [p.on_end for p in self._processors]
        single = sampled_targets[0] if len(sampled_targets) == 1 else None

        def on_end(span: ReadableSpan) -> None:
            if red_end is not None:
                red_end(span)
            if span._context[3] & 1:  # trace_flags, by position (the property is a Python call)
                if single is not None:
                    single(span)
                else:
                    for target in sampled_targets:
                        target(span)
            for other in others:
                other(span)

        self.on_end = on_end  # type: ignore[method-assign]
        red_start = self.red.on_start if self.red is not None else None
        starts = [p.on_start for p in self._processors]
        self.needs_on_ending = bool(self._processors)  # MeshwatchSpan.end skips _on_ending when False
        if not starts and red_start is not None:
            self.on_start = red_start  # type: ignore[method-assign]
        else:

            def on_start(span: Any, parent_context: Context | None = None) -> None:
                if red_start is not None:
                    red_start(span)
                for start in starts:
                    start(span, parent_context=parent_context)

            self.on_start = on_start  # type: ignore[method-assign]

    def set_batcher(self, batcher: BoundedBatcher[ReadableSpan] | None) -> BoundedBatcher[ReadableSpan] | None:
        old, self.batcher = self.batcher, batcher
        self._rebind()
        return old

    def add_listener(self, listener: Callable[[ReadableSpan], None]) -> None:
        self.listeners.append(listener)
        self._rebind()

    def remove_listener(self, listener: Callable[[ReadableSpan], None]) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)
        self._rebind()

    # TracerProvider.add_span_processor calls this on its active processor.
    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        self._processors.append(span_processor)
        self._rebind()

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:  # replaced by _rebind
        raise NotImplementedError

    def _on_ending(self, span: Any) -> None:
        for processor in self._processors:
            processor._on_ending(span)

    def on_end(self, span: ReadableSpan) -> None:  # replaced per instance by _rebind
        raise NotImplementedError

    def shutdown(self) -> None:
        for processor in self._processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        ok = True
        if self.batcher is not None:
            ok = self.batcher.force_flush(timeout_millis / 1000)
        for processor in self._processors:
            ok = processor.force_flush(timeout_millis) and ok
        return ok


def redact_spans(redactor: Redactor) -> Callable[[list[ReadableSpan]], list[ReadableSpan]]:
    """The batcher's ``prepare`` step: mask sensitive attribute values on the export thread."""

    plain_key_sets = redactor.plain_key_sets

    def prepare(batch: list[ReadableSpan]) -> list[ReadableSpan]:
        if not redactor.enabled:
            return batch
        for span in batch:
            # Common case without a single Python call: a key set already known to be plain,
            # no mapping values, no events (BoundedAttributes: its own dict, so C does the work).
            attributes = span._attributes
            values = getattr(attributes, "_dict", attributes)
            if (
                not span._events
                and (not values or plain_key_sets.get(tuple(values)))
                and dict not in map(type, values.values() if values else ())
            ):
                continue
            redact_span(redactor, span)
        return batch

    return prepare


def redact_span(redactor: Redactor, span: ReadableSpan) -> None:
    """Mask in place: the ReadableSpan is meshwatch's own copy, made when the span ended."""
    attributes = span._attributes
    if attributes:
        new = redactor.mapping(attributes)
        if new is not attributes:
            span._attributes = dict(new)
    if span._events:
        events = []
        changed = False
        for event in span._events:
            original = event.attributes or {}
            new_attributes = redactor.mapping(original)
            if new_attributes is not original:
                changed = True
                events.append(Event(event.name, dict(new_attributes), event.timestamp))
            else:
                events.append(event)
        if changed:
            span._events = tuple(events)
