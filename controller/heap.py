"""The controller's heap and Python's cyclic garbage collector.

A compile of a large data centre builds millions of long-lived objects: 409,557 flow entries at
1,000 hypervisors, their matches, groups and tables. CPython runs a full collection each time the
objects that survived younger collections grow by a quarter, and a full collection walks every
tracked object. As the tables grew at a cold start that meant some fifteen walks of a growing
heap, the last ones a second each: 6.4 s of the controller's 15 s of CPU went to the collector,
which found nothing to collect (what a compile builds holds no reference cycles and is freed by
reference counting when the next compile replaces it).

So in a large data centre (LARGE_SWITCHES switches or LARGE_HOSTS hosts) no collection runs while a
compile builds, and after it the heap is frozen (`gc.freeze()`): what exists then is left out of later
collections, which walk only what was made since. A small fabric, whose collections cost little, is
left to Python's defaults. Anything frozen is still freed by reference counting. Only garbage in
reference cycles among frozen objects (a transient object caught by the freeze) would wait, so every
SWEEP_EVERY seconds the heap is unfrozen, collected in full once, and frozen again.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator

LOG = logging.getLogger("goldilocks.controller")

SWEEP_EVERY = 300.0  # seconds between full collections of the whole heap
LARGE_SWITCHES = 200
LARGE_HOSTS = 2_000


class Heap:
    def __init__(self, sweep_every: float = SWEEP_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.sweep_every = sweep_every
        self._last_sweep = clock()
        self.sweeps = 0
        self.managed = False  # True once a large compile froze the heap

    @staticmethod
    def large(switches: int, hosts: int) -> bool:
        return switches >= LARGE_SWITCHES or hosts >= LARGE_HOSTS

    @contextlib.contextmanager
    def building(self, large: bool) -> Iterator[None]:
        """Around a compile of a `large` data centre: no collection while it builds (the two or
        three it triggered walked everything it had built so far, 0.7 s each at 1,000
        hypervisors), and what exists at the end is frozen. Otherwise nothing changes."""
        if not large:
            yield
            return
        enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            gc.freeze()
            self.managed = True
            if enabled:
                gc.enable()

    def maybe_sweep(self, now: float) -> bool:
        """Every `sweep_every` seconds once a large compile froze the heap: one full collection of
        the whole heap, then freeze it again."""
        if not self.managed or now - self._last_sweep < self.sweep_every:
            return False
        self._last_sweep = now
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.sweeps += 1
        LOG.debug("heap sweep: %d objects collected in %.3f s", found, time.perf_counter() - started)
        return True
