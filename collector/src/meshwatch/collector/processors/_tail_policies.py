"""The ``tail_sampling`` policies: one small evaluator per policy type, built from the config.

Each evaluator answers one question about one whole trace, with the decision values
and edge cases of the OpenTelemetry Collector contrib ``tailsamplingprocessor``
(v0.161.0), so the same config keeps the same traces in both:

* attribute policies look at every resource and span attribute with the key; a
  value of another type reads as the Go zero value (``""``, ``0``, ``false``), and
  ``invert_match`` gives a plain sampled / not sampled (the deprecated "inverted"
  decisions are gone from v0.161.0's built-in policies);
* ``numeric_attribute``'s ``min_value: 0`` / ``max_value: 0`` mean "unbounded";
* ``latency`` keeps a running earliest start and latest end while it walks the spans
  in arrival order and stops at the first point inside the window, as Go does;
* ``probabilistic`` is FNV-1a 64 over the salt (default ``default-hash-seed``) and the
  16 trace-id bytes, kept when ``<= floor((2^64 - 1) × percentage / 100)``, computed
  in Go's 64-bit ``big.Float`` arithmetic;
* ``rate_limiting`` is a token bucket that starts full (``golang.org/x/time/rate``);
* ``composite`` counts spans per sub-policy per second and tries the sub-policies in
  ``composite_sub_policy`` order.

A trace is seen through ``TraceView``: the span count and size are free, the decoded
spans are built once, only for policies that read them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from enum import IntEnum
from fractions import Fraction
from typing import Any, Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ._tail_config import (
    AndConfig,
    AndSubPolicyConfig,
    CompositeConfig,
    CompositeSubPolicyConfig,
    NotSubPolicyConfig,
    PolicyConfig,
)

__all__ = [
    "Decision",
    "TraceView",
    "Evaluator",
    "Policy",
    "build_policies",
    "probabilistic_threshold",
    "fnv1a64",
]


class Decision(IntEnum):
    SAMPLED = 1
    NOT_SAMPLED = 2
    DROPPED = 3


SAMPLED, NOT_SAMPLED, DROPPED = Decision.SAMPLED, Decision.NOT_SAMPLED, Decision.DROPPED


class TraceView:
    """One trace as the policies see it; ``request`` is decoded on first use only."""

    __slots__ = ("_request", "bounds", "nbytes", "span_count", "trace_id", "wire")

    def __init__(
        self, trace_id: bytes, span_count: int, nbytes: int, wire: bytes, bounds: tuple[int, int] | None = None
    ) -> None:
        self.trace_id = trace_id
        self.span_count = span_count
        self.nbytes = nbytes
        #: The trace as a serialized ``ExportTraceServiceRequest`` (one resource entry per arrival).
        self.wire = wire
        #: (earliest start, latest end) in ns when known at ingest, so ``latency`` need not decode.
        self.bounds = bounds
        self._request: Any = None

    @property
    def resource_spans(self) -> Any:
        if self._request is None:
            self._request = ExportTraceServiceRequest.FromString(self.wire)
        return self._request.resource_spans

    def spans(self) -> Iterator[Any]:
        for rs in self.resource_spans:
            for ss in rs.scope_spans:
                yield from ss.spans

    def mentions(self, text: bytes) -> bool:
        """False when ``text`` is nowhere in the trace's bytes (so no attribute has that key)."""
        return text in self.wire


class Evaluator(Protocol):
    def evaluate(self, trace: TraceView) -> Decision: ...


# --- leaf policies ---------------------------------------------------------------------------


class AlwaysSample:
    def evaluate(self, trace: TraceView) -> Decision:
        return SAMPLED


class Latency:
    def __init__(self, threshold_ms: int, upper_threshold_ms: int) -> None:
        self.low = threshold_ms
        self.high = upper_threshold_ms

    def evaluate(self, trace: TraceView) -> Decision:
        low, high = self.low, self.high
        if high == 0 and trace.bounds is not None:
            # The running duration only grows, so "exceeded at some span" is "exceeded at the end".
            first, last = trace.bounds
            return SAMPLED if _millis(last - first) > low else NOT_SAMPLED
        first = last = 0
        for span in trace.spans():
            start, end = span.start_time_unix_nano, span.end_time_unix_nano
            if first == 0 or start < first:
                first = start
            if last == 0 or end > last:
                last = end
            ms = _millis(last - first)
            if (ms > low) if high == 0 else (low < ms <= high):
                return SAMPLED
        return NOT_SAMPLED


def _millis(nanos: int) -> int:
    """Go's ``Duration.Milliseconds()``: truncated toward zero."""
    return nanos // 1_000_000 if nanos >= 0 else -(-nanos // 1_000_000)


_STATUS_CODES = {"UNSET": 0, "OK": 1, "ERROR": 2}


class StatusCode:
    def __init__(self, names: list[str]) -> None:
        self.codes = frozenset(_STATUS_CODES[n] for n in names)
        #: A set code is serialized as field 3 (tag 0x18) of the span's Status: without those
        #: two bytes anywhere, no span has it (UNSET is never serialized, so no shortcut then).
        self.needles = None if 0 in self.codes else [bytes((0x18, c)) for c in self.codes]

    def evaluate(self, trace: TraceView) -> Decision:
        if self.needles is not None and not any(map(trace.mentions, self.needles)):
            return NOT_SAMPLED
        codes = self.codes
        for span in trace.spans():
            if span.status.code in codes:
                return SAMPLED
        return NOT_SAMPLED


def _first(attributes: Any, key: str) -> Any:
    """The value of the first attribute named ``key`` (pcommon ``Map.Get``), else None."""
    for kv in attributes:
        if kv.key == key:
            return kv.value
    return None


class _AttributeFilter:
    """Shared walk of the attribute policies: ``matches(value, on_span)`` says if one value matches."""

    def __init__(self, key: str, invert: bool) -> None:
        self.key = key
        self.needle = key.encode()
        self.invert = invert

    def matches(self, value: Any, on_span: bool) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self, trace: TraceView) -> Decision:
        if not trace.mentions(self.needle):  # the key is nowhere: no value can match
            return SAMPLED if self.invert else NOT_SAMPLED
        key, matches = self.key, self.matches
        for rs in trace.resource_spans:
            value = _first(rs.resource.attributes, key)
            if value is not None and matches(value, False):
                return NOT_SAMPLED if self.invert else SAMPLED
            for ss in rs.scope_spans:
                for span in ss.spans:
                    value = _first(span.attributes, key)
                    if value is not None and matches(value, True):
                        return NOT_SAMPLED if self.invert else SAMPLED
        return SAMPLED if self.invert else NOT_SAMPLED


def _str(value: Any) -> str:
    return value.string_value if value.WhichOneof("value") == "string_value" else ""


class StringAttribute(_AttributeFilter):
    def __init__(self, key: str, values: list[str], regex: bool, cache_size: int, invert: bool) -> None:
        super().__init__(key, invert)
        if regex:
            patterns = [re.compile(v) for v in values]
            cache: dict[str, bool] = {}
            limit = cache_size if cache_size > 0 else 128

            def match(text: str) -> bool:
                known = cache.get(text)
                if known is None:
                    known = any(p.search(text) for p in patterns)
                    if len(cache) >= limit:
                        cache.clear()
                    cache[text] = known
                return known

            self.match: Callable[[str], bool] = match
        else:
            exact = frozenset(v for v in values if v)
            self.match = exact.__contains__

    def matches(self, value: Any, on_span: bool) -> bool:
        text = _str(value)
        if on_span and not text:  # Go skips empty span values, not empty resource values
            return False
        return self.match(text)


class NumericAttribute(_AttributeFilter):
    def __init__(self, key: str, min_value: int, max_value: int, invert: bool) -> None:
        super().__init__(key, invert)
        self.low = min_value if min_value else -(2**63)
        self.high = max_value if max_value else 2**63 - 1

    def matches(self, value: Any, on_span: bool) -> bool:
        number = value.int_value if value.WhichOneof("value") == "int_value" else 0
        return self.low <= number <= self.high


class BooleanAttribute(_AttributeFilter):
    def __init__(self, key: str, value: bool, invert: bool) -> None:
        super().__init__(key, invert)
        self.value = value

    def matches(self, value: Any, on_span: bool) -> bool:
        flag = value.bool_value if value.WhichOneof("value") == "bool_value" else False
        return flag == self.value


_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_MAX_U64 = 2**64 - 1


def fnv1a64(data: bytes, state: int = _FNV64_OFFSET) -> int:
    for byte in data:
        state = ((state ^ byte) * _FNV64_PRIME) & _MAX_U64
    return state


def _round_to_bits(value: Fraction, bits: int) -> Fraction:
    """``value`` (> 0) rounded to ``bits`` significant bits, ties to even (big.Float's default)."""
    exponent = value.numerator.bit_length() - value.denominator.bit_length()
    # scale so that the integer part has exactly ``bits`` bits
    shift = bits - 1 - exponent
    scaled = value * (Fraction(2) ** shift)
    if scaled >= 2**bits:
        shift -= 1
        scaled = value * (Fraction(2) ** shift)
    elif scaled < 2 ** (bits - 1):
        shift += 1
        scaled = value * (Fraction(2) ** shift)
    whole, rest = divmod(scaled.numerator, scaled.denominator)
    twice = 2 * rest
    if twice > scaled.denominator or (twice == scaled.denominator and whole & 1):
        whole += 1
    return Fraction(whole) / (Fraction(2) ** shift)


def probabilistic_threshold(percentage: float) -> int:
    """``floor((2^64 - 1) × percentage / 100)`` as the Go processor computes it (64-bit big.Float)."""
    ratio = Fraction(percentage / 100)  # the float64 Go multiplies by
    if ratio <= 0:
        return 0
    product = _round_to_bits(Fraction(_MAX_U64) * ratio, 64)
    return min(_MAX_U64, product.numerator // product.denominator)


class Probabilistic:
    def __init__(self, hash_salt: str, percentage: float) -> None:
        self.state = fnv1a64((hash_salt or "default-hash-seed").encode())
        self.threshold = probabilistic_threshold(percentage)

    def evaluate(self, trace: TraceView) -> Decision:
        return SAMPLED if fnv1a64(trace.trace_id, self.state) <= self.threshold else NOT_SAMPLED


class TokenBucket:
    """``golang.org/x/time/rate.Limiter``: ``rate`` tokens a second, at most ``burst``, starting full."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.clock = clock
        self.last: float | None = None

    def allow(self, n: int) -> bool:
        now = self.clock()
        if self.last is not None and now > self.last:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now if self.last is None or now > self.last else self.last
        if n <= self.tokens:
            self.tokens -= n
            return True
        return False


class RateLimiting:
    def __init__(self, spans_per_second: int, burst: int, clock: Callable[[], float]) -> None:
        self.bucket = TokenBucket(spans_per_second, burst if burst > 0 else 2 * spans_per_second, clock)

    def evaluate(self, trace: TraceView) -> Decision:
        return SAMPLED if self.bucket.allow(trace.span_count) else NOT_SAMPLED


class SpanCount:
    def __init__(self, min_spans: int, max_spans: int) -> None:
        self.low, self.high = min_spans, max_spans

    def evaluate(self, trace: TraceView) -> Decision:
        count = trace.span_count
        if count >= self.low and (self.high == 0 or count <= self.high):
            return SAMPLED
        return NOT_SAMPLED


_TS_KEY = re.compile(r"^(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})$")
_TS_VALUE = re.compile(r"^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$")


def parse_trace_state(text: str) -> dict[str, str] | None:
    """A W3C ``tracestate`` as a dict, None when malformed (then it matches nothing, as in Go)."""
    members: dict[str, str] = {}
    for entry in text.split(","):
        member = entry.strip(" \t")
        if not member:
            continue
        key, sep, value = member.partition("=")
        if not sep or not _TS_KEY.match(key) or not _TS_VALUE.match(value) or key in members:
            return None
        members[key] = value
    return members if len(members) <= 32 else None


class TraceState:
    def __init__(self, key: str, values: list[str]) -> None:
        self.key = key
        self.values = frozenset(v for v in values if v and len(key) + len(v) < 256)

    def evaluate(self, trace: TraceView) -> Decision:
        for span in trace.spans():
            state = parse_trace_state(span.trace_state) if span.trace_state else {}
            if state is not None and state.get(self.key, "") in self.values:
                return SAMPLED
        return NOT_SAMPLED


# --- combinators -----------------------------------------------------------------------------


class And:
    def __init__(self, subs: list[Evaluator]) -> None:
        self.subs = subs

    def evaluate(self, trace: TraceView) -> Decision:
        for sub in self.subs:
            if sub.evaluate(trace) is NOT_SAMPLED:
                return NOT_SAMPLED
        return SAMPLED


class Not:
    def __init__(self, sub: Evaluator) -> None:
        self.sub = sub

    def evaluate(self, trace: TraceView) -> Decision:
        decision = self.sub.evaluate(trace)
        if decision is SAMPLED:
            return NOT_SAMPLED
        if decision is NOT_SAMPLED:
            return SAMPLED
        return decision


class Drop:
    """Drops the trace when every sub-policy samples it; drop wins over every other policy."""

    def __init__(self, subs: list[Evaluator]) -> None:
        self.subs = subs

    def evaluate(self, trace: TraceView) -> Decision:
        for sub in self.subs:
            if sub.evaluate(trace) is NOT_SAMPLED:
                return NOT_SAMPLED
        return DROPPED


class Composite:
    def __init__(self, max_total: int, subs: list[tuple[Evaluator, int]], clock: Callable[[], float]) -> None:
        self.max_total = max_total
        self.subs = subs
        self.spent = [0] * len(subs)
        self.second = -1
        self.clock = clock

    def evaluate(self, trace: TraceView) -> Decision:
        second = int(self.clock())
        if second != self.second:
            self.second = second
            self.spent = [0] * len(self.subs)
        for index, (sub, allocated) in enumerate(self.subs):
            if sub.evaluate(trace) is SAMPLED:
                after = self.spent[index] + trace.span_count
                if after <= allocated and after <= self.max_total:
                    self.spent[index] = after
                    return SAMPLED
                return NOT_SAMPLED
        return NOT_SAMPLED


# --- building from the config ------------------------------------------------------------------


class Policy:
    """A named top-level policy."""

    __slots__ = ("evaluator", "is_drop", "name")

    def __init__(self, name: str, evaluator: Evaluator, is_drop: bool) -> None:
        self.name = name
        self.evaluator = evaluator
        self.is_drop = is_drop


def _shared(cfg: Any, clock: Callable[[], float]) -> Evaluator:
    kind = cfg.type
    if kind == "always_sample":
        return AlwaysSample()
    if kind == "latency":
        return Latency(cfg.latency.threshold_ms, cfg.latency.upper_threshold_ms)
    if kind == "numeric_attribute":
        n = cfg.numeric_attribute
        return NumericAttribute(n.key, n.min_value, n.max_value, n.invert_match)
    if kind == "probabilistic":
        return Probabilistic(cfg.probabilistic.hash_salt, cfg.probabilistic.sampling_percentage)
    if kind == "status_code":
        return StatusCode(cfg.status_code.status_codes)
    if kind == "string_attribute":
        s = cfg.string_attribute
        return StringAttribute(s.key, s.values, s.enabled_regex_matching, s.cache_max_size, s.invert_match)
    if kind == "rate_limiting":
        return RateLimiting(cfg.rate_limiting.spans_per_second, cfg.rate_limiting.burst_capacity, clock)
    if kind == "span_count":
        return SpanCount(cfg.span_count.min_spans, cfg.span_count.max_spans)
    if kind == "trace_state":
        return TraceState(cfg.trace_state.key, cfg.trace_state.values)
    if kind == "boolean_attribute":
        b = cfg.boolean_attribute
        return BooleanAttribute(b.key, b.value, b.invert_match)
    raise ValueError(f"unknown sampling policy type {kind}")  # the config models make this unreachable


def _and_sub(cfg: AndSubPolicyConfig, clock: Callable[[], float]) -> Evaluator:
    if cfg.type == "not":
        assert cfg.not_ is not None
        return Not(_not_sub(cfg.not_.not_sub_policy, clock))
    return _shared(cfg, clock)


def _not_sub(cfg: NotSubPolicyConfig, clock: Callable[[], float]) -> Evaluator:
    return _shared(cfg, clock)


def _and(cfg: AndConfig, clock: Callable[[], float]) -> Evaluator:
    return And([_and_sub(sub, clock) for sub in cfg.and_sub_policy])


def _composite_sub(cfg: CompositeSubPolicyConfig, clock: Callable[[], float]) -> Evaluator:
    if cfg.type == "and":
        assert cfg.and_ is not None
        return _and(cfg.and_, clock)
    return _shared(cfg, clock)


def _composite(cfg: CompositeConfig, clock: Callable[[], float]) -> Evaluator:
    total = float(cfg.max_total_spans_per_second)
    share = total / len(cfg.composite_sub_policy)
    percent = {r.policy: r.percent for r in cfg.rate_allocation}
    subs = []
    for sub in cfg.composite_sub_policy:
        given = percent.get(sub.name, 0)
        allocated = (given / 100) * total if given > 0 else share
        subs.append((_composite_sub(sub, clock), int(allocated)))
    return Composite(cfg.max_total_spans_per_second, subs, clock)


def _top(cfg: PolicyConfig, clock: Callable[[], float]) -> Evaluator:
    if cfg.type == "and":
        assert cfg.and_ is not None
        return _and(cfg.and_, clock)
    if cfg.type == "not":
        assert cfg.not_ is not None
        return Not(_not_sub(cfg.not_.not_sub_policy, clock))
    if cfg.type == "drop":
        assert cfg.drop is not None
        return Drop([_and_sub(sub, clock) for sub in cfg.drop.drop_sub_policy])
    if cfg.type == "composite":
        assert cfg.composite is not None
        return _composite(cfg.composite, clock)
    return _shared(cfg, clock)


def build_policies(configs: list[PolicyConfig], clock: Callable[[], float]) -> list[Policy]:
    """The top-level policies, drop policies first (they win, so they are asked first)."""
    policies = [Policy(c.name, _top(c, clock), c.type == "drop") for c in configs]
    return [p for p in policies if p.is_drop] + [p for p in policies if not p.is_drop]
