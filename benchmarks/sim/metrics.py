"""What one step of rollouts is worth, measured with the estimator each allocator is paired with
(``Allocator.estimator``: its effective-sample ratio is measured with what it is trained with).

The quantities themselves (effective leaf, mixed root, informative comparison) have one
definition, in ``verl_trace.metrics``; docs/benchmarks.md states them once.
"""

from __future__ import annotations

from dataclasses import dataclass

from verl_trace.config import AdvantageConfig
from verl_trace.metrics import forest_metrics
from verl_trace.tree import RolloutTree


@dataclass
class StepMetrics:
    leaves: int
    generated_tokens: int
    effective_sample_ratio: float
    mixed_root_ratio: float
    comparisons: int
    informative_per_1k_tokens: float
    mixed_roots: int


def step_metrics(trees: list[RolloutTree], estimator: str, cfg: AdvantageConfig) -> StepMetrics:
    m = forest_metrics(trees, estimator, cfg, prefix="")
    return StepMetrics(
        leaves=int(m["leaves"]),
        generated_tokens=int(m["tokens_generated"]),
        effective_sample_ratio=m["effective_sample_ratio"],
        mixed_root_ratio=m["mixed_root_ratio"],
        comparisons=int(m["informative_comparisons"]),
        informative_per_1k_tokens=m["informative_per_1k_tokens"],
        mixed_roots=round(m["mixed_root_ratio"] * m["prompts"]),
    )
