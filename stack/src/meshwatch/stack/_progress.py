"""Progress output for long installs: a line per step and a heartbeat while it runs.

Written to stderr as plain lines (no carriage-return tricks), so it reads the
same in a terminal, in ``make`` output and in a CI log.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["say", "run_with_heartbeat", "format_duration", "InstallError"]


class InstallError(RuntimeError):
    """An install step failed; the message says what failed and how to fix it."""


def say(message: str) -> None:
    print(f"meshwatch-stack: {message}", file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def run_with_heartbeat(
    argv: Sequence[str],
    *,
    what: str,
    log_path: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    every: float = 15.0,
    count_lines: Callable[[str], bool] | None = None,
) -> None:
    """Run a long command, logging its output to a file and printing a heartbeat.

    ``count_lines`` picks output lines worth counting (e.g. "go: downloading") so
    the heartbeat shows that something is moving, not just that time passes.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    counted = 0
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(every):
            extra = f", {counted} modules fetched" if counted else ""
            say(f"  … {what}: {format_duration(time.monotonic() - started)}{extra}")

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            log.write(line)
            tail = [*tail, line.rstrip()][-15:]
            if count_lines and count_lines(line):
                counted += 1
        code = proc.wait()
    done.set()
    ticker.join()
    if code != 0:
        shown = "\n    ".join(tail)
        raise InstallError(
            f"{what} failed (exit {code}) after {format_duration(time.monotonic() - started)}.\n"
            f"    {shown}\n  Full log: {log_path}"
        )
    say(f"  {what}: done in {format_duration(time.monotonic() - started)}")
