"""The ``tail_sampling`` processor's configuration, shaped like the OpenTelemetry
Collector contrib ``tailsamplingprocessor`` (v0.161.0) where the concepts are the same.

The policy tree has the Go processor's levels, so a config written for it either
loads here with the same meaning or is refused with the key that differs:

* a top-level policy is any shared policy or ``and`` / ``not`` / ``drop`` / ``composite``;
* an ``and`` or ``drop`` sub-policy is a shared policy or ``not``;
* a ``not`` sub-policy is a shared policy;
* a ``composite`` sub-policy is a shared policy or ``and``.

Missing sections take the Go zero values (``latency: {}`` keeps every trace longer
than 0 ms), except where the Go processor refuses or misbehaves: ``status_code``
needs at least one code, ``numeric_attribute`` one bound, ``string_attribute`` valid
regular expressions.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from ..duration import Duration
from ..model import StrictModel

__all__ = [
    "SHARED_TYPES",
    "TailSamplingConfig",
    "PolicyConfig",
    "AndSubPolicyConfig",
    "CompositeSubPolicyConfig",
    "NotSubPolicyConfig",
]

#: Policy types every level accepts (the Go processor's ``sharedPolicyCfg``).
SharedType = Literal[
    "always_sample",
    "latency",
    "numeric_attribute",
    "probabilistic",
    "status_code",
    "string_attribute",
    "rate_limiting",
    "span_count",
    "trace_state",
    "boolean_attribute",
]
SHARED_TYPES = frozenset(SharedType.__args__)  # type: ignore[attr-defined]

_STATUS = frozenset({"OK", "ERROR", "UNSET"})


class _Section(StrictModel):
    """A policy's own section (``latency: {...}``)."""


class LatencyConfig(_Section):
    threshold_ms: int = 0
    #: 0: no upper bound.
    upper_threshold_ms: int = 0


class NumericAttributeConfig(_Section):
    key: str = ""
    #: 0 means "no lower bound", as in the Go processor.
    min_value: int = 0
    #: 0 means "no upper bound", as in the Go processor.
    max_value: int = 0
    invert_match: bool = False


class ProbabilisticConfig(_Section):
    #: Empty: the Go processor's default salt, so both keep the same traces.
    hash_salt: str = ""
    sampling_percentage: float = 0.0


class StatusCodeConfig(_Section):
    status_codes: list[str] = Field(default_factory=list)


class StringAttributeConfig(_Section):
    key: str = ""
    values: list[str] = Field(default_factory=list)
    enabled_regex_matching: bool = False
    cache_max_size: int = 0
    invert_match: bool = False


class RateLimitingConfig(_Section):
    spans_per_second: int = 0
    #: 0: twice ``spans_per_second``.
    burst_capacity: int = 0


class SpanCountConfig(_Section):
    min_spans: int = 0
    #: 0: no upper bound.
    max_spans: int = 0


class TraceStateConfig(_Section):
    key: str = ""
    values: list[str] = Field(default_factory=list)


class BooleanAttributeConfig(_Section):
    key: str = ""
    value: bool = False
    invert_match: bool = False


class _SharedPolicy(StrictModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = ""
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    numeric_attribute: NumericAttributeConfig = Field(default_factory=NumericAttributeConfig)
    probabilistic: ProbabilisticConfig = Field(default_factory=ProbabilisticConfig)
    status_code: StatusCodeConfig = Field(default_factory=StatusCodeConfig)
    string_attribute: StringAttributeConfig = Field(default_factory=StringAttributeConfig)
    rate_limiting: RateLimitingConfig = Field(default_factory=RateLimitingConfig)
    span_count: SpanCountConfig = Field(default_factory=SpanCountConfig)
    trace_state: TraceStateConfig = Field(default_factory=TraceStateConfig)
    boolean_attribute: BooleanAttributeConfig = Field(default_factory=BooleanAttributeConfig)

    @model_validator(mode="after")
    def _section_is_usable(self) -> _SharedPolicy:
        kind = self.type  # type: ignore[attr-defined]
        if kind == "status_code":
            if not self.status_code.status_codes:
                raise ValueError("status_code.status_codes: give at least one of OK, ERROR, UNSET")
            unknown = [c for c in self.status_code.status_codes if c not in _STATUS]
            if unknown:
                raise ValueError(f"status_code.status_codes: unknown {unknown} (supported: OK, ERROR, UNSET)")
        elif kind == "numeric_attribute":
            if not self.numeric_attribute.min_value and not self.numeric_attribute.max_value:
                raise ValueError("numeric_attribute: set min_value and/or max_value (0 means unbounded)")
        elif kind == "string_attribute" and self.string_attribute.enabled_regex_matching:
            for pattern in self.string_attribute.values:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"string_attribute.values: invalid regex {pattern!r}: {exc}") from None
        elif kind == "probabilistic" and self.probabilistic.sampling_percentage < 0:
            raise ValueError("probabilistic.sampling_percentage must be >= 0")
        elif kind == "rate_limiting" and self.rate_limiting.spans_per_second < 0:
            raise ValueError("rate_limiting.spans_per_second must be >= 0")
        return self


class NotSubPolicyConfig(_SharedPolicy):
    type: SharedType


class NotConfig(_Section):
    not_sub_policy: NotSubPolicyConfig


class AndSubPolicyConfig(_SharedPolicy):
    type: SharedType | Literal["not"]
    not_: NotConfig | None = Field(None, alias="not")

    @model_validator(mode="after")
    def _not_has_its_section(self) -> AndSubPolicyConfig:
        if self.type == "not" and self.not_ is None:
            raise ValueError("a policy of type `not` needs a `not: {not_sub_policy: ...}` section")
        return self


class AndConfig(_Section):
    and_sub_policy: list[AndSubPolicyConfig] = Field(min_length=1)


class DropConfig(_Section):
    drop_sub_policy: list[AndSubPolicyConfig] = Field(min_length=1)


class CompositeSubPolicyConfig(_SharedPolicy):
    type: SharedType | Literal["and"]
    and_: AndConfig | None = Field(None, alias="and")

    @model_validator(mode="after")
    def _and_has_its_section(self) -> CompositeSubPolicyConfig:
        if self.type == "and" and self.and_ is None:
            raise ValueError("a policy of type `and` needs an `and: {and_sub_policy: [...]}` section")
        return self


class RateAllocationConfig(_Section):
    policy: str
    percent: int


class CompositeConfig(_Section):
    max_total_spans_per_second: int = 0
    #: Accepted for compatibility; the Go processor (v0.161.0) evaluates the
    #: sub-policies in the order of ``composite_sub_policy``, and so does meshwatch.
    policy_order: list[str] = Field(default_factory=list)
    composite_sub_policy: list[CompositeSubPolicyConfig] = Field(min_length=1)
    rate_allocation: list[RateAllocationConfig] = Field(default_factory=list)


class PolicyConfig(_SharedPolicy):
    name: str = Field("", validate_default=True)
    type: SharedType | Literal["and", "not", "drop", "composite"]
    and_: AndConfig | None = Field(None, alias="and")
    not_: NotConfig | None = Field(None, alias="not")
    drop: DropConfig | None = None
    composite: CompositeConfig | None = None

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise ValueError("policy name cannot be empty")
        return value

    @model_validator(mode="after")
    def _combinator_has_its_section(self) -> PolicyConfig:
        needed = {"and": self.and_, "not": self.not_, "drop": self.drop, "composite": self.composite}
        if self.type in needed and needed[self.type] is None:
            raise ValueError(f"a policy of type `{self.type}` needs a `{self.type}:` section")
        return self


class DecisionCacheConfig(_Section):
    #: Trace ids whose "keep" decision is remembered after their spans left memory
    #: (the Go processor's default is 0, no cache; meshwatch keeps one by default).
    sampled_cache_size: int = Field(100_000, ge=0)
    non_sampled_cache_size: int = Field(100_000, ge=0)


class TailSamplingConfig(StrictModel):
    decision_wait: Duration = Field(30.0, gt=0)
    #: meshwatch: once the root span is in, decide after this long with no new span
    #: of the trace (each span restarts it), instead of waiting ``decision_wait``. 0: off.
    decision_wait_after_root_received: Duration = Field(0.0, ge=0)
    num_traces: int = Field(50_000, ge=1)
    #: Accepted for compatibility (a Go allocation hint); no effect here.
    expected_new_traces_per_sec: int = Field(0, ge=0)
    decision_cache: DecisionCacheConfig = Field(default_factory=DecisionCacheConfig)
    policies: list[PolicyConfig] = Field(min_length=1)
    sample_on_first_match: bool = False
    drop_pending_traces_on_shutdown: bool = False
    #: A trace growing past this many bytes is not sampled at once. 0: no limit.
    maximum_trace_size_bytes: int = Field(0, ge=0)
    #: Only the Go default strategy exists here.
    sampling_strategy: Literal["trace-complete"] = "trace-complete"
    #: Go's switch for waiting instead of evicting; ``true`` means ``when_full: refuse``.
    block_on_overflow: bool = False
    #: meshwatch: bytes of span data held (undecided traces and decided output not yet
    #: handed on) at most; 0: bounded by ``num_traces`` only.
    memory_limit_mib: float = Field(256, ge=0)
    #: meshwatch: what happens when ``num_traces`` or ``memory_limit_mib`` is reached:
    #: ``evict_oldest`` decides the oldest undecided trace at once on the spans it has
    #: (counted), ``refuse`` answers the sender "retry later" (gRPC RESOURCE_EXHAUSTED /
    #: HTTP 429 with Retry-After). Default: ``refuse`` if ``block_on_overflow``, else ``evict_oldest``.
    when_full: Literal["evict_oldest", "refuse"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TailSamplingConfig:
        if self.block_on_overflow and self.when_full == "evict_oldest":
            raise ValueError("block_on_overflow: true contradicts when_full: evict_oldest; set one of them")
        if self.when_full is None:
            self.when_full = "refuse" if self.block_on_overflow else "evict_oldest"
        names = [p.name for p in self.policies]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate policy name(s) {duplicates}")
        return self

    @property
    def memory_limit_bytes(self) -> int:
        return int(self.memory_limit_mib * 1024 * 1024)
