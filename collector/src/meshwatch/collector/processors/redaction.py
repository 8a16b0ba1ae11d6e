"""``redaction`` processor: mask secrets before they leave the collector.

Attribute *keys* matching ``blocked_key_patterns`` (regexes searched case-blind in
the key; the defaults cover passwords, secrets, tokens, authorization headers, API
keys and cookies) have their whole value replaced by ``***`` (``action: mask``) or
by its SHA-256 hex (``action: hash``, so equal secrets stay correlatable without
being readable). Substrings of string values matching ``blocked_values`` (default:
credit-card numbers, confirmed with the Luhn check) are replaced the same way.

It covers span (and span event) attributes, log record attributes and string or
structured log bodies, metric data point attributes, and the resource attributes
of all three signals, recursing into nested maps and lists. Every redaction is
counted in ``meshwatch_processor_redactions_total{processor, signal, reason}``
with ``reason`` ``key`` or ``value``.

    processors:
      redaction:
        action: mask                      # or hash
        blocked_key_patterns: [...]       # replaces the defaults
        extra_blocked_key_patterns: [ssn] # added to them
        blocked_values: [...]
        ignored_keys: [http.request.header.x-request-id]
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from ..component import Capabilities, Consumer, CreateSettings, Kind, make_factory
from ..otlp_values import attribute_lists, resources
from ..signals import Signal
from ._base import InPlaceProcessor

__all__ = ["RedactionConfig", "RedactionProcessor", "factory", "DEFAULT_KEY_PATTERNS", "CARD_PATTERN"]

# A key matches when one of these words stands in it as a whole word: delimited by the
# start or end or any non-alphanumeric character (".", "_", "-"), so ``db.password``,
# ``x-api-key``, ``http.request.header.set-cookie`` and ``client_secret`` match while
# ``gen_ai.usage.input_tokens`` or ``secretary`` do not.
_EDGE_L = r"(?:^|[^a-z0-9])"
_EDGE_R = r"(?:$|[^a-z0-9])"
DEFAULT_KEY_PATTERNS: tuple[str, ...] = tuple(
    f"{_EDGE_L}{word}{_EDGE_R}"
    for word in (
        r"passw(?:or)?d",
        r"pwd",
        r"secret",
        r"(?:access[-_]|refresh[-_]|id[-_]|auth[-_]|session[-_])?token",
        r"authorization",
        r"proxy[-_]authorization",
        r"api[-_]?key",
        r"(?:set[-_])?cookie",
        r"credentials?",
        r"private[-_]?key",
    )
)
#: 13 to 19 digits, optionally grouped by single spaces or dashes (card numbers).
CARD_PATTERN = r"(?<![0-9])(?:[0-9][ -]?){12,18}[0-9](?![0-9])"
_DIGITS_ONLY = re.compile(r"^[0-9 -]+$")


def luhn_ok(text: str) -> bool:
    """True if the digits of ``text`` pass the Luhn check (as card numbers do)."""
    digits = [ord(c) - 48 for c in text if "0" <= c <= "9"]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if position % 2 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return total % 10 == 0


class RedactionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["mask", "hash"] = "mask"
    mask: str = "***"
    blocked_key_patterns: list[str] = list(DEFAULT_KEY_PATTERNS)
    extra_blocked_key_patterns: list[str] = []
    blocked_values: list[str] = [CARD_PATTERN]
    #: A value match made only of digits, spaces and dashes is redacted only if it passes
    #: the Luhn check (keeps order numbers and timestamps readable).
    luhn_check: bool = True
    ignored_keys: list[str] = []
    #: Also redact log bodies (string bodies by value, structured bodies by key and value).
    log_bodies: bool = True

    @field_validator("blocked_key_patterns", "extra_blocked_key_patterns", "blocked_values")
    @classmethod
    def _valid_regexes(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
        return patterns


class RedactionProcessor(InPlaceProcessor):
    def __init__(self, settings: CreateSettings, config: RedactionConfig, next_consumer: Consumer) -> None:
        super().__init__(settings, next_consumer)
        self.config = config
        patterns = [*config.blocked_key_patterns, *config.extra_blocked_key_patterns]
        self._key_re = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None
        values = config.blocked_values
        self._value_re = re.compile("|".join(f"(?:{p})" for p in values)) if values else None
        self._ignored = frozenset(config.ignored_keys)
        self._key_cache: dict[str, bool] = {}
        self._hash = config.action == "hash"
        self._counter = self.telemetry.counter(
            "meshwatch_processor_redactions",
            "Attribute values and log bodies masked or hashed by a redaction processor",
            ("processor", "signal", "reason"),
        )

    # --- decisions ---------------------------------------------------------------------

    def _blocked_key(self, key: str) -> bool:
        decision = self._key_cache.get(key)
        if decision is None:
            decision = key not in self._ignored and self._key_re is not None and bool(self._key_re.search(key))
            if len(self._key_cache) < 50_000:  # keys repeat; an unbounded cache would not
                self._key_cache[key] = decision
        return decision

    def _replacement(self, text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest() if self._hash else self.config.mask

    def _redact_text(self, text: str) -> tuple[str, int]:
        """Matched substrings replaced; returns the new text and how many were replaced."""
        count = 0

        def substitute(match: re.Match[str]) -> str:
            nonlocal count
            found = match.group(0)
            if self.config.luhn_check and _DIGITS_ONLY.match(found) and not luhn_ok(found):
                return found
            count += 1
            return self._replacement(found)

        assert self._value_re is not None
        return self._value_re.sub(substitute, text), count

    # --- walking values ----------------------------------------------------------------

    def _redact_whole(self, value: Any) -> None:
        if self._hash:
            from ..otlp_values import any_to_string

            text = any_to_string(value)
            value.string_value = hashlib.sha256(text.encode()).hexdigest()
        else:
            value.string_value = self.config.mask

    def _walk_value(self, value: Any, counts: list[int]) -> None:
        kind = value.WhichOneof("value")
        if kind == "string_value":
            if self._value_re is not None and value.string_value:
                text, found = self._redact_text(value.string_value)
                if found:
                    value.string_value = text
                    counts[1] += found
        elif kind == "kvlist_value":
            self._walk_attributes(value.kvlist_value.values, counts)
        elif kind == "array_value":
            for item in value.array_value.values:
                self._walk_value(item, counts)

    def _walk_attributes(self, attributes: Any, counts: list[int]) -> None:
        for kv in attributes:
            if self._blocked_key(kv.key):
                if not (kv.value.WhichOneof("value") == "string_value" and kv.value.string_value == self.config.mask):
                    self._redact_whole(kv.value)
                    counts[0] += 1
            else:
                self._walk_value(kv.value, counts)

    def process(self, batch: Any) -> bool:
        counts = [0, 0]  # by key, by value
        message = batch.message
        for resource in resources(batch.signal, message):
            self._walk_attributes(resource.attributes, counts)
        for attrs in attribute_lists(batch.signal, message):
            self._walk_attributes(attrs, counts)
        if batch.signal is Signal.TRACES:
            for rs in message.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        for event in span.events:
                            self._walk_attributes(event.attributes, counts)
        elif batch.signal is Signal.LOGS and self.config.log_bodies:
            for rl in message.resource_logs:
                for sl in rl.scope_logs:
                    for record in sl.log_records:
                        self._walk_value(record.body, counts)
        if counts[0] or counts[1]:
            batch.mark_modified()
            signal = str(batch.signal)
            if counts[0]:
                self._counter.labels(str(self.id), signal, "key").inc(counts[0])
            if counts[1]:
                self._counter.labels(str(self.id), signal, "value").inc(counts[1])
        return True


factory = make_factory(
    Kind.PROCESSOR,
    "redaction",
    signals=frozenset({Signal.TRACES, Signal.METRICS, Signal.LOGS}),
    config_model=RedactionConfig,
    create=RedactionProcessor,
    capabilities=Capabilities(mutates_data=True),
)
