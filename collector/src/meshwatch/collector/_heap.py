"""Keep the start-up heap out of the garbage collector's full collections.

By the time the collector serves, the interpreter holds some 50,000 tracked objects that
live as long as the process: grpc, protobuf, the config, the graph. CPython's
full (generation 2) collection walks all of them; measured with
``bench/collector/sequential_cost.py --gc-trace`` one took 14–117 ms on a loaded machine and
came every few thousand requests, so it lands in a sequential sender's p99 (the issue's target is 5 ms).
``gc.freeze()`` after start-up moves them to the permanent generation, which collections
skip; what the collector allocates while serving is still collected as before.

It runs once the pipelines are built and before the receivers open: the one full
collection it starts with holds the GIL for tens of ms (hundreds on a loaded machine),
which, run after the ports open, the first requests waited for (a sequential p99 of
119–610 ms in ``telemetrygen_compare.py``'s latency probe right after start).
"""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]


def settle_heap() -> int:
    """Collect start-up garbage once, then freeze what survives; returns the frozen object count."""
    gc.collect()  # garbage is collected first, so freezing keeps nothing that was already unreachable
    gc.freeze()
    return gc.get_freeze_count()
