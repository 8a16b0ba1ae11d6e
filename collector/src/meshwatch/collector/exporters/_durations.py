"""Durations in config as the OpenTelemetry Collector writes them (``15s``, ``5m``, ``100ms``) or as seconds."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["parse_duration"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def parse_duration(value: Any) -> Any:
    """``"1m30s"`` → 90.0; numbers pass through (seconds); anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        total = 0.0
        position = 0
        for match in _PART.finditer(text):
            if match.start() != position:
                break
            total += float(match.group(1)) * _UNITS[match.group(2)]
            position = match.end()
        if position == len(text) and text:
            return total
        raise ValueError(f"{value!r} is not a duration (examples: 15s, 500ms, 5m, 1h30m, or seconds as a number)")
    return value
