"""Durations in config files, the one parser every component uses.

Written as the OpenTelemetry Collector writes them (Go's ``time.ParseDuration``: ``200ms``,
``5s``, ``1m30s``, ``1h``) or as a number of seconds (``5``, ``0.5``, ``"5"``). There was
a second, one-unit parser once, so ``metric_expiration: 1m30s`` was accepted and
``shutdown_timeout: 1m30s`` refused; one function keeps every key reading the same.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["Duration", "parse_duration"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|ms|s|m|h)\s*")


def parse_duration(value: Any) -> Any:
    """``"1m30s"`` → 90.0, ``"200ms"`` → 0.2, ``"5"`` → 5.0; numbers pass through (seconds).

    Anything else raises ``ValueError`` with examples, which pydantic reports against the key.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    total, position = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if text and position == len(text):
        return total
    raise ValueError(f"{value!r} is not a duration (write e.g. 500ms, 15s, 5m, 1h30m, or seconds as a number)")


#: A float of seconds that also accepts ``"200ms"`` / ``"1m30s"``-style strings.
Duration = Annotated[float, BeforeValidator(parse_duration)]
