"""The ``Host`` a running collector gives its components: storage, logger, fatal errors.

(Self-telemetry is not the host's: each component is handed it in ``CreateSettings.telemetry``.)
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from .component import ComponentId

__all__ = ["CollectorHost"]


class CollectorHost:
    """Concrete ``component.Host``; ``fatal`` is set when a component reports it cannot go on."""

    def __init__(self, storage_dir: Path, logger: logging.Logger | None = None):
        self.storage_dir = Path(storage_dir)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.logger = logger or logging.getLogger("meshwatch.collector")
        self.fatal = threading.Event()
        self.fatal_error: tuple[ComponentId, BaseException] | None = None
        #: Components that failed (for /healthz): id -> message.
        self.failed: dict[str, str] = {}

    def report_fatal(self, component: ComponentId, error: BaseException) -> None:
        self.logger.error("component %s cannot go on: %s", component, error)
        self.failed[str(component)] = str(error)
        if self.fatal_error is None:
            self.fatal_error = (component, error)
        self.fatal.set()
