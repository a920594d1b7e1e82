"""Budget accounting: leaves per step (hard) and, optionally, generated tokens (hard, by
worst-case reservation). Every allocator spends through one ledger, so no allocator can overspend."""

from __future__ import annotations

from dataclasses import dataclass, field


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
