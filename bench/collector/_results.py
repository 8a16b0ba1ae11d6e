"""Raw benchmark results as committed JSON: every repeat, its spread, and where it ran.

A figure in docs/benchmarks.md names the command and the commit; this is what records
both (the commit at the start and at the end, so a run across a commit is visible), with
the load average, because the machine is shared and a loaded run must say so.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from queue_fsync_latency import _commit

RESULTS = Path(__file__).resolve().parents[1] / "results"


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of the repeats (what the docs quote as "median (min–max)")."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def interleaved(cases: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run every case once per repeat, in alternating order, so drift on a shared machine hits all alike."""
    names = list(cases)
    measured: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            measured[name].append(cases[name]())
    return measured


class Recorder:
    """Collects a run's context at start; ``write`` adds the results and the end-of-run context."""

    def __init__(self, command: str) -> None:
        self.context: dict[str, Any] = {
            "command": command,
            "commit_at_start": _commit(),
            "loadavg_at_start": loadavg(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": sys.version.split()[0],
            "machine": platform.machine(),
        }

    def write(self, path: Path, results: dict[str, Any]) -> None:
        payload = {
            **self.context,
            "commit_at_end": _commit(),
            "loadavg_at_end": loadavg(),
            **results,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(f"raw results: {path}")
