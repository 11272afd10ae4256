"""The cyclic garbage collector, set for a long-running process once it has started."""

from __future__ import annotations

import gc

# Collect young objects after this many new ones rather than the default 700.
YOUNG_OBJECTS = 10_000


def settle() -> None:
    """Call once startup is over, before serving.

    What exists by then (modules, settings, routes, the pool) lives as long as the process,
    so it is frozen: the collector need not walk it again, which keeps its pauses short.
    A run or a request frees almost everything it makes by reference counting; collecting
    after every 700 new objects cost a draining worker 15 % of its CPU, after every 10,000
    it costs 1 %, with the same peak memory (the API gains a few percent the same way).
    """
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS, 10, 10)
