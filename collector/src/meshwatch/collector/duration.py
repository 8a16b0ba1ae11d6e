"""Durations in config files: ``"200ms"``, ``"5s"``, ``"1m"`` (Go style, as OTel writes them) or seconds."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["Duration", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """``"200ms"``, ``"5s"``, ``"1m"`` or a number of seconds → seconds (float)."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration (write e.g. 200ms, 5s, 1m or a number of seconds)")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


#: A float of seconds that also accepts ``"200ms"``-style strings.
Duration = Annotated[float, BeforeValidator(parse_duration)]
