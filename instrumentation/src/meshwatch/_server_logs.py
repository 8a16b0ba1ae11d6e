"""The web servers' own log lines (start-up, access log, "Exception in ASGI application") as the app's.

uvicorn, gunicorn and hypercorn each configure their own loggers when they start,
after meshwatch: uvicorn's ``uvicorn`` and ``uvicorn.access``, gunicorn's
``gunicorn.error`` and ``gunicorn.access``, hypercorn's ``hypercorn.access`` do not
propagate to the root logger, so their records were neither exported nor printed
as JSON; an unhandled exception in an ASGI app (logged by ``uvicorn.error``) never
reached Elasticsearch. After each server's own logging set-up, meshwatch's handler
is added to those loggers where their records would not reach it otherwise, and
where meshwatch prints JSON lines the server's console handlers make way for it
(a log file or syslog handler the user configured stays).

Each hook wraps one method the server calls once to set up logging; when a server
release no longer has it, the hook is skipped and the server logs as it always did.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._logs import MeshwatchHandler

__all__ = ["SERVER_LOGGERS", "adopt_server_loggers", "hook_server_logging", "is_console_handler"]

#: For each server: the module and class whose method sets its logging up, and the loggers it sets up.
SERVER_LOGGERS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "uvicorn": ("uvicorn.config", "Config", "configure_logging", ("uvicorn", "uvicorn.error", "uvicorn.access")),
    "gunicorn": ("gunicorn.glogging", "Logger", "setup", ("gunicorn.error", "gunicorn.access")),
    "hypercorn": ("hypercorn.logging", "Logger", "__init__", ("hypercorn.error", "hypercorn.access")),
}


def is_console_handler(handler: logging.Handler) -> bool:
    """A handler that writes to the terminal (stdout or stderr), not to a file, syslog or elsewhere."""
    if isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler):
        return False
    stream = getattr(handler, "stream", None)
    return stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


def _reaches(logger: logging.Logger, handler: logging.Handler) -> bool:
    """Whether a record logged on ``logger`` is handled by ``handler`` (directly or by propagation)."""
    current: logging.Logger | None = logger
    while current is not None:
        if handler in current.handlers:
            return True
        if not current.propagate:
            return False
        current = current.parent  # type: ignore[assignment]
    return False


def adopt_server_loggers(names: tuple[str, ...], handler: MeshwatchHandler) -> None:
    """Route the named loggers' records to ``handler``; drop their console handlers if it prints JSON."""
    for name in sorted(names, key=lambda n: n.count(".")):  # parents first: children then reach it
        logger = logging.getLogger(name)
        if handler.stdout:
            for other in list(logger.handlers):
                if other is not handler and is_console_handler(other):
                    logger.removeHandler(other)
        if not _reaches(logger, handler):
            logger.addHandler(handler)


def _after(cls: type, method: str, then: Callable[[], None]) -> bool:
    original = getattr(cls, method, None)
    if original is None or not callable(original):
        return False
    if getattr(original, "_meshwatch_then", None) is not None:
        original._meshwatch_then[:] = [then]
        return True
    follow_up = [then]

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        for fn in follow_up:
            try:
                fn()
            except Exception as exc:  # never break the server's start
                logging.getLogger("meshwatch").debug("meshwatch could not adopt the server's loggers: %s", exc)
        return result

    wrapper._meshwatch_then = follow_up  # type: ignore[attr-defined]
    setattr(cls, method, wrapper)
    return True


def hook_server_logging(current_handler: Callable[[], MeshwatchHandler | None]) -> list[str]:
    """Hook every installed server's logging set-up; returns the servers hooked."""
    hooked = []
    for server, (module, cls_name, method, names) in SERVER_LOGGERS.items():
        if importlib.util.find_spec(server) is None:
            continue

        def then(names: tuple[str, ...] = names) -> None:
            handler = current_handler()
            if handler is not None:
                adopt_server_loggers(names, handler)

        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except Exception as exc:  # a release that moved it: the server logs as it always did
            logging.getLogger("meshwatch").debug("meshwatch left %s's logging alone: %s", server, exc)
            continue
        if _after(cls, method, then):
            hooked.append(server)
            then()  # a server that set its logging up before init() (uvicorn.run() in the app's main)
    return hooked
