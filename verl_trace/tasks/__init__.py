"""Layer 7: task families as :class:`~.base.Task` objects (tools, reward, data, scripted teacher).

``get_task(name)`` for ``bfcl`` and ``math``; the CPU demo runs them with ``--task``
(``verl_trace.demo.task_family``). The search task predates this interface and lives in
``recipes/search_r1`` and ``verl_trace.demo``.
"""

from __future__ import annotations

from .base import Task, loop_kwargs

TASKS = ("bfcl", "math")


def get_task(name: str) -> Task:
    if name == "bfcl":
        from .bfcl import task
    elif name == "math":
        from .math_tool import task
    else:
        raise ValueError(f"unknown task {name!r}; choose from {list(TASKS)}")
    return task()


__all__ = ["TASKS", "Task", "get_task", "loop_kwargs"]
