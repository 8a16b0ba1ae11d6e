"""Celery's worker sets up logging and ends its pool processes its own way; keep meshwatch working through both.

A Celery worker "hijacks" the root logger when it starts (``worker_hijack_root_logger``,
on by default): it removes every handler, meshwatch's included, and adds its own
console handler, again in each prefork child. Task loggers (``get_task_logger``) hang
under ``celery.task``, which does not propagate to the root. So a line logged in a task
was neither exported nor printed as JSON. After Celery's set-up (its
``after_setup_logger`` and ``after_setup_task_logger`` signals) meshwatch's handler is
put back on both loggers, and, where meshwatch prints JSON lines, Celery's console
handlers it just added make way for it (a ``--logfile`` handler stays). Celery also
replaces ``sys.stdout`` with a proxy that logs what is written; meshwatch's JSON lines
are written past it (see :func:`console_stream`).

A prefork pool process ends with ``os._exit`` at a warm shutdown, so ``atexit`` never
runs there: the spans and log records of the last tasks it ran were lost (one of two
in the test). Celery's ``worker_process_shutdown`` signal, sent in the pool process
just before, flushes them.

Task duration and failures are metrics too (``celery.task.duration`` in seconds and
``celery.task.failures``, by task name), measured from Celery's own task signals in
the process that runs the task, so they count every task, sampled or not, with or
without the Celery instrumentor.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from ._server_logs import is_console_handler

if TYPE_CHECKING:
    from ._logs import MeshwatchHandler

__all__ = ["TASK_DURATION", "console_stream", "integrate_celery", "record_task_metrics"]

_connected: list[Callable[..., None]] = []
_metrics_connected: list[Callable[..., None]] = []
TASK_DURATION = "celery.task.duration"


def console_stream() -> IO[str]:
    """``sys.stdout``, unless Celery redirected it into logging: then the process's real stdout.

    Writing a JSON line into Celery's proxy would log it again (as a WARNING of
    ``celery.redirected``) in Celery's own format.
    """
    stream = sys.stdout
    log_module = sys.modules.get("celery.utils.log")
    proxy = getattr(log_module, "LoggingProxy", None) if log_module is not None else None
    if proxy is not None and isinstance(stream, proxy) and sys.__stdout__ is not None:
        return sys.__stdout__
    return stream


def integrate_celery(current_handler: Callable[[], MeshwatchHandler | None], flush: Callable[[], None]) -> bool:
    """Connect to Celery's logging and pool-process signals (once per process); False without Celery.

    ``flush`` must be bounded in time (meshwatch's exit flush is, by ``shutdown_timeout``).
    """
    if _connected:
        return True
    try:
        from celery import signals
    except ImportError:
        return False

    def restore(logger: logging.Logger | None = None, **_: Any) -> None:
        handler = current_handler()
        if handler is None or logger is None:
            return
        prints_json = handler.stdout
        for other in list(logger.handlers):
            if other is not handler and prints_json and is_console_handler(other):
                logger.removeHandler(other)
        if handler not in logger.handlers:
            logger.addHandler(handler)

    def flush_pool_process(**_: Any) -> None:
        flush()

    signals.after_setup_logger.connect(restore, weak=False)
    signals.after_setup_task_logger.connect(restore, weak=False)
    signals.worker_process_shutdown.connect(flush_pool_process, weak=False)
    _connected.append(restore)
    return True


def record_task_metrics(meter: Any) -> bool:
    """Task duration (by name and final state) and failures (by name and error type), once per process."""
    if _metrics_connected:
        return True
    try:
        from celery import signals
    except ImportError:
        return False
    duration = meter.create_histogram(TASK_DURATION, unit="s", description="Time a Celery task took to run.")
    failures = meter.create_counter(
        "celery.task.failures", unit="{task}", description="Celery tasks that ended in an exception."
    )
    started: dict[str, float] = {}

    def prerun(task_id: str | None = None, **_: Any) -> None:
        if task_id is not None:
            started[task_id] = time.perf_counter()

    def postrun(task_id: str | None = None, task: Any = None, state: str | None = None, **kwargs: Any) -> None:
        began = started.pop(task_id, None) if task_id is not None else None
        name = getattr(task, "name", None) or "unknown"
        if began is not None:
            duration.record(
                time.perf_counter() - began, {"celery.task.name": name, "celery.task.state": state or "UNKNOWN"}
            )
        if state == "FAILURE":
            error = kwargs.get("retval")
            failures.add(1, {"celery.task.name": name, "error.type": type(error).__name__ if error else "unknown"})

    signals.task_prerun.connect(prerun, weak=False)
    signals.task_postrun.connect(postrun, weak=False)
    _metrics_connected.append(postrun)
    return True
