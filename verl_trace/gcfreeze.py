"""Keep Python's cyclic garbage collector off the objects a process made at start-up.

A full collection walks every tracked object of the process. In the rollout worker that is mostly
start-up state, which lives as long as the process: importing verl's agent-loop worker alone
leaves ~570,000 tracked objects (torch, sympy, transformers, verl). The planner's per-step trees
trigger one or more full collections per step at production scale, and each re-walked all of
them. ``gc.freeze()`` moves what exists now to a permanent generation that collections skip;
docs/benchmarks.md ("Issue 11 §4, third pass") has the measurement. The
benchmark harness calls the same function, so both follow one rule.

Process-wide and once: call it when start-up is over (verl, the model client and tokenizer
loaded), in a process that lives for the whole job. Frozen objects are still freed by reference
counting; only reference cycles among them are never collected, which bounds what can leak to
start-up garbage, and the collection just before the freeze clears what is already garbage.
"""

from __future__ import annotations

import gc

_frozen = False


def freeze_startup_objects() -> int:
    """Collect, then freeze every object that exists now (the first call only; later calls are
    no-ops, so what a step creates is never frozen). Returns the number of frozen objects."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True
    return gc.get_freeze_count()
