"""Budget accounting: leaves per step (hard) and, optionally, generated tokens (hard, by
worst-case reservation). Every allocator spends through one ledger, so no allocator can overspend.

The arithmetic that sizes a step lives here too, once, for the trainer, the rollout workers, the
simulator and the CPU demo: leaves per root (``leaves_per_prompt``, where its default applies), the
step's and a worker's budget (``step_budget``, ``worker_budget``) and the candidate pool
(``pool_size``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import TraceConfig


@dataclass(frozen=True)
class Budget:
    leaves: int
    tokens: int | None = None
    max_leaf_tokens: int | None = None  # worst case one leaf can generate (response length)

    def __post_init__(self) -> None:
        if self.leaves < 1:
            raise ValueError(f"budget.leaves must be >= 1, got {self.leaves}")
        if self.tokens is not None:
            if self.tokens < 1:
                raise ValueError(f"budget.tokens must be >= 1, got {self.tokens}")
            if self.max_leaf_tokens is None or self.max_leaf_tokens < 1:
                raise ValueError("budget.tokens needs budget.max_leaf_tokens >= 1 to reserve worst-case cost")


@dataclass
class BudgetLedger:
    """Launched leaves never exceed ``budget.leaves``; with a token budget, a leaf is launched only
    if the tokens already generated plus the worst case of every leaf in flight still fit."""

    budget: Budget
    launched: int = 0
    completed: int = 0
    failed: int = 0
    tokens_generated: int = 0
    unspent_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        return self.launched - self.completed

    @property
    def remaining(self) -> int:
        return self.budget.leaves - self.launched

    def affordable(self, wanted: int) -> int:
        """How many of ``wanted`` leaves can be launched now."""
        n = max(0, min(wanted, self.remaining))
        b = self.budget
        if b.tokens is not None and n:
            free = b.tokens - self.tokens_generated - self.in_flight * b.max_leaf_tokens
            n = min(n, max(0, free // b.max_leaf_tokens))
        return n

    def launch(self, n: int) -> None:
        if n < 0 or n > self.affordable(n):
            raise RuntimeError(f"launching {n} leaves would exceed the budget ({self.summary()})")
        self.launched += n

    def complete(self, generated_tokens: int, failed: bool = False) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("a leaf completed that was never launched")
        self.completed += 1
        self.failed += int(failed)
        self.tokens_generated += int(generated_tokens)

    def note_unspent(self, reason: str, leaves: int) -> None:
        if leaves > 0:
            self.unspent_reasons[reason] = self.unspent_reasons.get(reason, 0) + leaves

    def summary(self) -> dict[str, int]:
        return {
            "budget_leaves": self.budget.leaves,
            "launched": self.launched,
            "completed": self.completed,
            "failed": self.failed,
            "tokens_generated": self.tokens_generated,
        }


def leaves_per_prompt(cfg: TraceConfig, rollout_n: int | None) -> int | None:
    """Leaves per root per step: ``trace.budget.leaves_per_prompt``, by default verl's ``rollout.n``
    (exactly GRPO's cost). ``None`` when neither is set. The one place this default is applied."""
    lp = cfg.budget.leaves_per_prompt
    return lp if lp is not None else rollout_n


def step_budget(
    cfg: TraceConfig, *, n_roots: int, rollout_n: int | None = None, response_length: int | None = None
) -> Budget:
    """The step's budget: ``leaves_per_prompt`` per root, plus ``budget.tokens`` reserved at the worst
    case of ``response_length`` generated tokens per leaf."""
    per_prompt = leaves_per_prompt(cfg, rollout_n)
    if per_prompt is None:
        raise ValueError("trace.budget.leaves_per_prompt: unset, and no rollout.n to default to")
    tokens = cfg.budget.tokens
    return Budget(leaves=n_roots * per_prompt, tokens=tokens, max_leaf_tokens=response_length if tokens else None)


def worker_budget(
    cfg: TraceConfig, *, n_roots: int, step_roots: int, rollout_n: int | None, response_length: int | None
) -> Budget:
    """A rollout worker's budget for its ``n_roots`` of the step's ``step_roots`` roots:
    ``step_budget``'s leaves per root, and its proportional share of ``trace.budget.tokens`` (a
    per-step cap; rounded down, at least one token)."""
    budget = step_budget(cfg, n_roots=n_roots, rollout_n=rollout_n, response_length=response_length)
    if budget.tokens is None or n_roots == step_roots:
        return budget
    return Budget(budget.leaves, max(1, budget.tokens * n_roots // step_roots), budget.max_leaf_tokens)


def pool_size(pool_factor: float, n_roots: int, fetch: int = 1) -> int:
    """Prompts in a step's candidate pool: ``pool_factor * n_roots`` rounded up (float noise aside, so
    1.1 x 10 is 11, not 12), then up to whole fetches of ``fetch`` prompts (the trainer's dataloader
    batches), and never fewer than ``n_roots``."""
    if fetch < 1:
        raise ValueError(f"pool_size: fetch must be >= 1, got {fetch}")
    want = math.ceil(round(pool_factor * n_roots, 9))
    return max(n_roots, math.ceil(want / fetch) * fetch)
