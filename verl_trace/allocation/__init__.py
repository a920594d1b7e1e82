"""Layer 3: budgets, allocators and the planner that runs them. One interface, chosen by
``trace.allocator``."""

from __future__ import annotations

import numpy as np

from ..config import TraceConfig
from ..predictor.base import Predictor
from .base import Allocator, Featurize, Launch, PlanContext, StepState, even_split
from .baselines import EntropyAllocator, PromptAllocator, TreeRandomAllocator, UniformAllocator
from .budget import Budget, BudgetLedger, leaves_per_prompt, pool_size, step_budget, worker_budget
from .planner import Issued, TreePlanner
from .trace import OracleAllocator, TraceAllocator

ALLOCATORS: dict[str, type[Allocator]] = {
    cls.name: cls
    for cls in (
        UniformAllocator,
        PromptAllocator,
        TreeRandomAllocator,
        EntropyAllocator,
        TraceAllocator,
        OracleAllocator,
    )
}
"""The registry of allocators, by ``trace.allocator`` name (the order is the benchmarks' order). What an
allocator can do is on its class (``Allocator``'s capability attributes). ``config.AllocatorName``
lists the same names for the config schema, which sits below this layer; a test keeps the two equal."""


def allocator_class(name: str) -> type[Allocator]:
    try:
        return ALLOCATORS[name]
    except KeyError:
        raise ValueError(f"trace.allocator: unknown allocator {name!r}; choose one of {list(ALLOCATORS)}") from None


def root_selecting_allocators() -> list[str]:
    """The allocators for which a candidate pool larger than the batch pays (error messages)."""
    return [name for name, cls in ALLOCATORS.items() if cls.selects_roots and not cls.simulator_only]


def build_allocator(cfg: TraceConfig) -> Allocator:
    return allocator_class(cfg.allocator)(cfg)


def new_planner(
    cfg: TraceConfig,
    allocator: Allocator,
    *,
    n_roots: int,
    budget: Budget,
    max_turns: int,
    predictor: Predictor | None = None,
    featurize: Featurize | None = None,
    rng: np.random.Generator | None = None,
) -> TreePlanner:
    """A planner for one training step."""
    if n_roots < 1:
        raise ValueError(f"n_roots must be >= 1, got {n_roots}")
    if max_turns < 1:
        raise ValueError(f"trace.max_turns must be >= 1, got {max_turns}")
    if allocator.needs_predictor and predictor is None:
        raise ValueError(f"allocator {allocator.name!r} needs a predictor")
    ctx = PlanContext(
        cfg=cfg,
        ledger=BudgetLedger(budget),
        n_roots=n_roots,
        max_turns=max_turns,
        predictor=predictor,
        featurize=featurize,
        rng=rng if rng is not None else np.random.default_rng(cfg.seed),
    )
    return TreePlanner(allocator, ctx)


__all__ = [
    "ALLOCATORS",
    "Allocator",
    "Budget",
    "BudgetLedger",
    "Issued",
    "Launch",
    "PlanContext",
    "StepState",
    "TreePlanner",
    "allocator_class",
    "build_allocator",
    "even_split",
    "leaves_per_prompt",
    "new_planner",
    "pool_size",
    "root_selecting_allocators",
    "step_budget",
    "worker_budget",
]
