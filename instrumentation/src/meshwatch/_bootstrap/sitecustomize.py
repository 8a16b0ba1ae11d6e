"""Imported by Python at start-up when ``meshwatch-run`` put this folder on PYTHONPATH.

It sets meshwatch up before the program imports anything, so the web framework
and client classes are instrumented when the program creates them. It never
stops the program: a failure is printed to stderr and the program runs
uninstrumented. Another ``sitecustomize`` further down the path still runs.
"""

from __future__ import annotations

import os
import sys


def _chain_next_sitecustomize() -> None:
    """Run the sitecustomize this one shadows (a distribution's or a virtualenv's), if any."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_meshwatch_chained_sitecustomize", candidate)
            if spec and spec.loader:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            return


def _auto_init() -> None:
    if os.environ.get("MESHWATCH_AUTO_INIT") != "1":
        return
    try:
        import meshwatch

        meshwatch.init()
    except Exception as exc:  # never break the program being launched
        print(f"meshwatch: not instrumented: {type(exc).__name__}: {exc}", file=sys.stderr)


try:
    _chain_next_sitecustomize()
except Exception as exc:
    print(f"meshwatch: the shadowed sitecustomize failed: {exc}", file=sys.stderr)
_auto_init()
