"""Virtual-time executor: runs a planner's launches on a fixed number of generation slots.

Each launched leaf is a trajectory of turns. A turn waits for a free slot (FIFO), holds it while
the engine prefills what is new and decodes the turn's tokens, then releases it while the tool
runs (search latency is heavy-tailed). Finished leaves are added to their tree and reported to
the planner as they finish; completions at the same virtual time go in one ``leaves_done`` call.
Planner and predictor calls are timed in real (CPU) seconds, separately from the simulation.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from verl_trace.allocation import Issued, TreePlanner
from verl_trace.tree import RolloutTree

from .env import Environment, TurnDraw
from .gcclock import CLOCK as GC

_GEN_DONE, _TOOL_DONE = 0, 1


@dataclass
class _Job:
    issued: Issued
    turns: list[TurnDraw]
    k: int = 0  # index of the turn being generated


@dataclass
class StepRun:
    """What one step's execution produced."""

    trees: dict[str, RolloutTree]
    makespan_s: float  # virtual seconds until the last leaf finished
    plan_wall_s: float  # real (wall-clock) seconds inside planner.start / leaves_done
    plan_cpu_s: float  # CPU seconds of this thread inside them (robust on a shared machine)
    plan_gc_s: float  # of which in the garbage collector (a process-wide cost that lands where it trips)
    events: int  # leaves_done calls


class SlotExecutor:
    def __init__(self, env: Environment, slots: int):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.env, self.slots = env, slots
        lat = env.r.latency
        self.decode, self.prefill = lat.decode_tokens_per_s, lat.prefill_tokens_per_s

    def run(self, planner: TreePlanner, pool: Sequence[RolloutTree]) -> StepRun:
        env = self.env
        heap: list[tuple[float, int, int, _Job]] = []
        waiting: deque[_Job] = deque()
        free = self.slots
        seq = 0
        now = 0.0
        stats = StepRun(trees={}, makespan_s=0.0, plan_wall_s=0.0, plan_cpu_s=0.0, plan_gc_s=0.0, events=0)

        def start_turn(job: _Job, t: float) -> None:
            nonlocal seq, free
            d = job.turns[job.k]
            dur = d.prefill_tokens / self.prefill + d.action_tokens / self.decode
            free -= 1
            seq += 1
            heapq.heappush(heap, (t + dur, seq, _GEN_DONE, job))

        def request(job: _Job, t: float) -> None:
            if free > 0:
                start_turn(job, t)
            else:
                waiting.append(job)

        def launch(issued: Sequence[Issued], t: float) -> None:
            for x in issued:
                for _ in range(x.count):
                    request(_Job(x, env.continuation(x.uid, x.anchor)), t)

        def timed(fn, *args):
            t0, c0, g0 = time.perf_counter(), time.thread_time(), GC.seconds
            out = fn(*args)
            stats.plan_cpu_s += time.thread_time() - c0
            stats.plan_gc_s += GC.seconds - g0
            stats.plan_wall_s += time.perf_counter() - t0
            return out

        launch(timed(planner.start, pool), 0.0)
        while heap:
            now = heap[0][0]
            finished: list[tuple[Issued, int]] = []
            while heap and heap[0][0] == now:
                _, _, kind, job = heapq.heappop(heap)
                if kind == _TOOL_DONE:
                    job.k += 1
                    request(job, now)
                    continue
                free += 1
                if waiting:
                    start_turn(waiting.popleft(), now)
                d = job.turns[job.k]
                if d.answer:
                    tree = planner.ctx.trees[job.issued.uid]
                    finished.append((job.issued, env.materialize(tree, job.issued.anchor, job.turns)))
                else:
                    seq += 1
                    heapq.heappush(heap, (now + d.tool_s, seq, _TOOL_DONE, job))
            if finished:
                stats.events += 1
                launch(timed(planner.leaves_done, finished), now)
        if not planner.done:
            raise RuntimeError("executor drained its queue but the planner is not done")
        stats.trees = dict(planner.ctx.trees)
        stats.makespan_s = now
        return stats
