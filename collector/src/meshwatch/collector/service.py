"""A running collector: config → graph → started components → self-telemetry → graceful stop."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from . import __version__
from .config import Config
from .graph import Graph
from .health import HealthServer
from .host import CollectorHost
from .telemetry import Telemetry

__all__ = ["Collector"]

log = logging.getLogger("meshwatch.collector")


class Collector:
    """Build, start, wait for a signal or a fatal error, stop with a bounded drain."""

    def __init__(self, config: Config) -> None:
        self.config = config
        #: The one owner of this collector's self-telemetry: every component gets it in its create settings.
        self.telemetry = Telemetry()
        self.host = CollectorHost(config.storage_dir, log)
        self.graph = Graph.build(config, self.telemetry)
        self.health: HealthServer | None = None
        self._stop = threading.Event()
        self.stop_reason = ""

    def start(self) -> None:
        address = self.config.service.telemetry.metrics.address
        if address and address.lower() != "none":
            self.health = HealthServer(address, self.telemetry, self._health)
        self.graph.start(self.host)
        if self.health is not None:
            self.health.start()
        log.info(
            "meshwatch-collector %s started: %d pipelines (%s), storage %s, self-telemetry %s",
            __version__,
            len(self.config.pipelines),
            ", ".join(p.name for p in self.config.pipelines),
            self.config.storage_dir,
            f"http://{address}/metrics" if self.health else "off",
        )

    def _health(self) -> tuple[bool, dict[str, Any]]:
        failed = dict(self.host.failed)
        return not failed and not self._stop.is_set(), {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.telemetry.started_at, 1),
            "components": len(self.graph.started),
            **({"failed": failed} if failed else {}),
        }

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self._stop.is_set():
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                raise SystemExit(1)
            self.stop_reason = signal.Signals(signum).name
            self._stop.set()

        signal.signal(signal.SIGTERM, handler)
        # A worker of ``--workers N`` leaves Ctrl-C to its supervisor, which sends it one SIGTERM
        # (the terminal's SIGINT to the whole group would otherwise count as the second signal).
        worker = os.environ.get("MESHWATCH_COLLECTOR_WORKER")
        signal.signal(signal.SIGINT, signal.SIG_IGN if worker else handler)

    def wait(self) -> int:
        """Block until a stop signal (0) or a fatal component error (1)."""
        while not self._stop.wait(0.5):
            if self.host.fatal.is_set():
                return 1
        return 0

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        budget = self.config.service.shutdown_timeout if timeout is None else timeout
        log.info(
            "stopping (%s): receivers first, then draining exporters for up to %.0fs",
            self.stop_reason or "stop",
            budget,
        )
        self.graph.shutdown(budget)
        if self.health is not None:
            self.health.stop()
        log.info("stopped")
