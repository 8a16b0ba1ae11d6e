"""Structured JSON logs on stderr, one object per line.

Fields: ``time`` (RFC 3339 UTC), ``level``, ``logger``, ``message``, plus ``exception``
when there is one, and ``suppressed`` (see below). Secrets are never passed to a logger
(tokens live in ``SecretStr``), so none can appear here.

Repeated lines are rate-limited (``RepeatFilter``): at most ``burst`` lines of one logger,
level and message template per ``window`` seconds; the first line after a quiet spell
says in ``suppressed`` how many were left out. A failure that repeats per connection or
per request (a descriptor shortage, a full disk) is then a few lines, not a flood.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from datetime import UTC, datetime

import orjson

__all__ = ["configure_logging", "JsonFormatter", "RepeatFilter"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # getattr: a stdlib LogRecord; ``RepeatFilter`` below sets ``suppressed`` on the ones it lets through.
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            entry["suppressed"] = suppressed
        if record.exc_info:
            exc_type, exc, tb = record.exc_info
            entry["exception"] = {
                "type": getattr(exc_type, "__name__", str(exc_type)),  # getattr: exc_info's type may be None
                "message": str(exc),
                "stack_trace": "".join(traceback.format_tb(tb)),
            }
        return orjson.dumps(entry, default=str).decode()


class RepeatFilter(logging.Filter):
    """Lets through at most ``burst`` records of one (logger, level, message template) per ``window`` s."""

    def __init__(self, burst: int = 10, window: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        #: key -> [window start, records let through in it, records held back]
        self._seen: dict[tuple[str, int, str], list[float]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[0] >= self.window:
                held = int(entry[2]) if entry is not None else 0
                if len(self._seen) > 10_000:  # many distinct templates: forget the old ones
                    self._seen.clear()
                self._seen[key] = [now, 1, 0]
                if held:
                    record.suppressed = held
                return True
            if entry[1] < self.burst:
                entry[1] += 1
                return True
            entry[2] += 1
            return False


def configure_logging(level: str = "info", encoding: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if encoding == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    for noisy in ("uvicorn", "uvicorn.error", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
