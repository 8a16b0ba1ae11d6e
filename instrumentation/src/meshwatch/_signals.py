"""Flush on a stop signal whose default action would skip ``atexit``.

Python runs ``atexit`` handlers on a normal exit and after ``KeyboardInterrupt``
(SIGINT's default), but a SIGTERM with the default disposition kills the process
outright, and so do servers that restore the previous handler and re-raise the
signal once they have shut down gracefully (uvicorn does). Every span and log
record still in meshwatch's queues was then lost: 0 of 30 spans reached the
collector when uvicorn got SIGTERM 0.3 s after the last request.

Only a signal left at its default (``SIG_DFL``) is taken over: a handler the
program installed itself, or ``SIG_IGN``, is left alone, and a server that
installs its own later replaces this one (and, like uvicorn, puts it back before
re-raising). After the flush the default disposition is restored and the signal
raised again, so the process still dies of it with the same exit status.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["STOP_SIGNALS", "flush_on_stop_signals"]

#: The signals whose default action ends the process without running ``atexit``.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM,)


def flush_on_stop_signals(flush: Callable[[], None]) -> list[signal.Signals]:
    """Install the handler for each of :data:`STOP_SIGNALS` still at its default; returns those taken.

    ``flush`` must be bounded in time (meshwatch's ``shutdown`` is, by ``shutdown_timeout``).
    Signal handlers can only be set from the main thread: elsewhere nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return []

    def on_stop(signum: int, frame: FrameType | None) -> None:
        try:
            flush()
        finally:
            # Die of the signal as the process would have without meshwatch.
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    taken = []
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, on_stop)
            taken.append(sig)
    return taken
