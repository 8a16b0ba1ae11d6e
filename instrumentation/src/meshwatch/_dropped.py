"""Counting what the SDK could not deliver, and saying so once in a while rather than per item.

Every drop (queue full, export failed, shut down) adds to one in-process tally
keyed by ``(signal, reason)``. The tally is exposed as the ``meshwatch.sdk.dropped``
counter (an observable counter, so the hot path pays one dict update and no
metric call) and summarised in one log line per ``drop_report_interval``.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["DropTally", "TALLY"]

_logger = logging.getLogger("meshwatch")


class DropTally:
    """Thread-safe counts of dropped telemetry items by signal and reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._reported: dict[tuple[str, str], int] = {}
        self._last_report = time.monotonic()
        self.report_interval = 60.0

    def add(self, signal: str, reason: str, count: int = 1) -> None:
        if count <= 0:
            return
        key = (signal, reason)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + count
        self.maybe_report()

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

    def total(self, signal: str | None = None) -> int:
        with self._lock:
            return sum(n for (sig, _), n in self._counts.items() if signal is None or sig == signal)

    def maybe_report(self, *, force: bool = False) -> None:
        """Log one summary line if items were dropped since the last one and the interval has passed."""
        now = time.monotonic()
        if not force and now - self._last_report < self.report_interval:
            return
        with self._lock:
            if not force and now - self._last_report < self.report_interval:
                return
            self._last_report = now
            new = {key: n - self._reported.get(key, 0) for key, n in self._counts.items()}
            new = {key: n for key, n in new.items() if n > 0}
            self._reported = dict(self._counts)
        if new:
            parts = ", ".join(f"{n} {signal} ({reason})" for (signal, reason), n in sorted(new.items()))
            _logger.warning(
                "meshwatch dropped telemetry: %s since the last report; is the collector reachable? "
                "(counted in the meshwatch.sdk.dropped metric)",
                parts,
                extra={"meshwatch_dropped": {f"{s}.{r}": n for (s, r), n in new.items()}},
            )

    def reset_after_fork(self) -> None:
        """A forked child starts its own counts (its parent keeps reporting its own)."""
        self._lock = threading.Lock()
        self._counts = {}
        self._reported = {}
        self._last_report = time.monotonic()


#: The process-wide tally every meshwatch processor and exporter reports into.
TALLY = DropTally()
