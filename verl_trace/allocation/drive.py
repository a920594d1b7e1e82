"""A synchronous driver for the planner: runs launches in FIFO order with a caller-supplied
rollout function. Used by tests and simple executors; the simulator and the verl worker drive
the planner from their own event loops instead."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from ..tree import RolloutTree
from .planner import Issued, TreePlanner

Rollout = Callable[[RolloutTree, Issued], list[int]]


def drive(planner: TreePlanner, pool: Sequence[RolloutTree], rollout: Rollout) -> None:
    """``rollout(tree, launch)`` must add ``launch.count`` finished leaves below ``launch.anchor``
    and return their node ids."""
    queue = deque(planner.start(pool))
    while queue:
        launch = queue.popleft()
        tree = planner.ctx.trees[launch.uid]
        leaf_ids = rollout(tree, launch)
        if len(leaf_ids) != launch.count:
            raise RuntimeError(f"rollout returned {len(leaf_ids)} leaves for a launch of {launch.count}")
        queue.extend(planner.leaves_done([(launch, leaf) for leaf in leaf_ids]))
    if not planner.done:
        raise RuntimeError("planner stopped with work outstanding")
