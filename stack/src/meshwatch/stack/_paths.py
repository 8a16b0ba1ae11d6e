"""Where the stack keeps its cache (installed backends) and its running state.

The cache is per machine and keyed by version, so a second install finds
everything in place. When running as root the cache lives in
``/var/cache/meshwatch`` rather than ``/root/.cache``: Elasticsearch refuses to
run as root, and the unprivileged user it runs as cannot enter ``/root``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "default_state_dir", "is_root"]


def is_root() -> bool:
    return os.geteuid() == 0


def cache_dir() -> Path:
    """The per-machine cache of installed backends (``MESHWATCH_CACHE`` overrides)."""
    override = os.environ.get("MESHWATCH_CACHE")
    if override:
        path = Path(override).expanduser()
    elif is_root():
        path = Path("/var/cache/meshwatch")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "meshwatch"
    path.mkdir(parents=True, exist_ok=True)
    # Readable by the unprivileged Elasticsearch user.
    path.chmod(0o755)
    return path


def default_state_dir() -> Path:
    """Where ``meshwatch-stack up`` keeps data, logs and PIDs of the running stack.

    Under the system temp folder rather than the checkout, so that a checkout in a
    private home folder still works for the Elasticsearch user.
    """
    override = os.environ.get("MESHWATCH_STACK_DIR")
    if override:
        return Path(override).expanduser()
    return Path(tempfile.gettempdir()) / f"meshwatch-stack-{os.getuid()}"
