"""Structured JSON logs on stderr, one object per line.

Fields: ``time`` (RFC 3339 UTC), ``level``, ``logger``, ``message``, plus ``exception``
when there is one. Secrets are never passed to a logger (tokens live in ``SecretStr``),
so none can appear here.
"""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC, datetime

import orjson

__all__ = ["configure_logging", "JsonFormatter"]

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
        if record.exc_info:
            exc_type, exc, tb = record.exc_info
            entry["exception"] = {
                "type": getattr(exc_type, "__name__", str(exc_type)),
                "message": str(exc),
                "stack_trace": "".join(traceback.format_tb(tb)),
            }
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "info", encoding: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if encoding == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    for noisy in ("uvicorn", "uvicorn.error", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
