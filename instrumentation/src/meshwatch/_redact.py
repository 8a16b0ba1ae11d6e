"""Masking secrets and PII by key pattern, in span/log attributes and log fields.

A key is sensitive if one of the configured regexes (case-insensitive) is found
in it: ``password``, ``api_key``, ``http.request.header.authorization``, ... Its
value becomes ``[REDACTED]``. Query strings of URL attributes are redacted per
parameter, so ``/login?token=abc&page=2`` keeps ``page=2``.

Keys repeat endlessly (the same few attribute names on every span), so the
verdict for a key is cached: the cost per attribute is one dict lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

__all__ = ["REDACTED", "Redactor"]

REDACTED = "[REDACTED]"

#: Attributes whose value is a URL or query string: redacted per query parameter.
_URL_KEYS = frozenset({"url.full", "url.query", "http.url", "http.target", "url.original"})
_MAX_CACHE = 4096


class Redactor:
    """Decides which keys are sensitive and masks their values."""

    def __init__(self, patterns: Iterable[str], *, enabled: bool = True) -> None:
        self.patterns = tuple(patterns)
        self.enabled = enabled and bool(self.patterns)
        self._regex = re.compile("|".join(f"(?:{p})" for p in self.patterns), re.IGNORECASE) if self.enabled else None
        self._verdicts: dict[str, bool] = {}
        self._kinds: dict[str, int] = {}
        #: Key sets (in order) known to hold no sensitive or URL key: every span of a route has the same one.
        self.plain_key_sets: dict[tuple[str, ...], bool] = {}

    def is_sensitive(self, key: str) -> bool:
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = bool(self._regex and self._regex.search(key))
            if len(self._verdicts) < _MAX_CACHE:
                self._verdicts[key] = verdict
        return verdict

    def _kind(self, key: str) -> int:
        """0: leave the value alone; 1: sensitive key; 2: URL or mapping to look into. Cached per key."""
        kind = self._kinds.get(key)
        if kind is None:
            kind = 1 if self.is_sensitive(key) else 2 if key in _URL_KEYS else 0
            if len(self._kinds) < _MAX_CACHE:
                self._kinds[key] = kind
        return kind

    def mapping(self, values: Mapping[str, Any]) -> Mapping[str, Any]:
        """The same mapping if nothing is sensitive (no copy), else a redacted copy."""
        if not self.enabled or not values:
            return values
        # BoundedAttributes iterates in Python (Mapping mixins); its own dict iterates in C.
        items = getattr(values, "_dict", values)
        key_set = tuple(items)
        plain = self.plain_key_sets.get(key_set)
        if plain is None:
            plain = all(self._kind(key) == 0 for key in key_set)
            if len(self.plain_key_sets) < _MAX_CACHE:
                self.plain_key_sets[key_set] = plain
        if plain and dict not in map(type, items.values()):  # the whole check runs in C
            return values
        kinds = self._kinds
        changed: dict[str, Any] | None = None
        for key, value in items.items():
            kind = kinds.get(key)
            if kind is None:
                kind = self._kind(key)
            if kind == 0 and type(value) is not dict:  # exact type check: an ABC isinstance costs more
                continue
            new = self.value(key, value)
            if new is not value:
                if changed is None:
                    changed = dict(values)
                changed[key] = new
        return values if changed is None else changed

    def value(self, key: str, value: Any) -> Any:
        """``value`` itself when it needs no masking (identity is how callers detect a change)."""
        if not self.enabled:
            return value
        if self.is_sensitive(key):
            return REDACTED
        if key in _URL_KEYS and isinstance(value, str) and ("=" in value):
            redacted = self.url(value)
            return value if redacted == value else redacted
        if isinstance(value, Mapping):
            new = self.mapping(value)
            return value if new is value else new
        return value

    def url(self, url: str) -> str:
        """Mask sensitive query parameters of a URL or bare query string."""
        base, sep, query = url.partition("?")
        if not sep:
            if "&" not in url and "=" not in url:
                return url
            base, query = "", url
        fragment = ""
        if "#" in query:
            query, _, fragment = query.partition("#")
        pairs = parse_qsl(query, keep_blank_values=True)
        if not any(self.is_sensitive(k) for k, _ in pairs):
            return url
        masked = urlencode([(k, REDACTED if self.is_sensitive(k) else v) for k, v in pairs], safe="[]")
        result = f"{base}{sep}{masked}" if sep else masked
        return f"{result}#{fragment}" if fragment else result
