"""CPU time spent in Python's cyclic garbage collector, so timings can say how much of a planner
call was the collector's. A full collection scans every tracked object of the process (torch's
modules included, not just the planner's trees) and lands in whichever call happens to allocate
when a threshold trips: it is a process-wide cost, not the planner's own arithmetic."""

from __future__ import annotations

import gc
import time


class GcClock:
    """Thread-CPU seconds inside collections since ``start()``, and full (generation 2) collections."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.thread_time()
            return
        self.seconds += time.thread_time() - self._t0
        self.full += info["generation"] == 2

    def start(self) -> GcClock:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


CLOCK = GcClock()
