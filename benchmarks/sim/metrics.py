"""What one step of rollouts is worth, measured with the estimator each allocator is paired with.

Definitions (docs/benchmarks.md states them once; everything here follows them):

* effective leaf: a leaf that receives a non-zero advantage on at least one of its turns from the
  allocator's estimator; effective-sample ratio = effective leaves / leaves used.
* mixed root: a selected prompt whose usable leaves do not all have the same reward.
* informative comparison: a pair of sibling subtrees (two children of the same node, the root
  included) whose leaves' mean rewards differ. For GRPO chains this is the number of
  (success, failure) pairs of the group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verl_trace.advantage import (
    LeafRecord,
    group_turn_advantages,
    tree_grpo_leaf_advantages,
    tree_turn_advantages,
)
from verl_trace.config import AdvantageConfig
from verl_trace.tree import RolloutTree, subtree_sum

# The estimator each allocator is trained with: its effective-sample ratio is measured with it.
ESTIMATOR = {
    "uniform": "trace",  # on chains the trace estimator is exactly GRPO
    "prompt": "trace",
    "tree_random": "tree_grpo",  # Tree-GRPO's inter- + intra-tree z-scores
    "entropy": "grpo",  # ARPO: GRPO over all leaves of the prompt
    "trace": "trace",
    "oracle": "trace",
}
_EPS = 1e-12


def effective_leaves(tree: RolloutTree, estimator: str, cfg: AdvantageConfig) -> int:
    leaves = tree.leaves()
    if estimator == "trace":
        adv = tree_turn_advantages(tree, cfg)
        return sum(int(np.any(np.abs(a) > _EPS)) for a in adv.values())
    if estimator == "tree_grpo":
        recs = [LeafRecord(tuple(tree.path(n.node_id)), n.reward or 0.0, n.status) for n in leaves]
        return int((np.abs(tree_grpo_leaf_advantages(recs, cfg)) > _EPS).sum())
    if estimator == "grpo":
        # Every leaf as its own chain below the root: the flat GRPO group ARPO trains with.
        recs = [LeafRecord((0, -1 - i), n.reward or 0.0, n.status) for i, n in enumerate(leaves)]
        return sum(int(np.any(np.abs(a) > _EPS)) for a in group_turn_advantages(recs, cfg))
    raise ValueError(f"unknown estimator {estimator!r}")


def informative_comparisons(tree: RolloutTree) -> int:
    """Pairs of sibling subtrees whose mean leaf rewards differ, summed over all nodes."""
    c = tree.columns()
    usable = c["leaf"] == 1
    reward = np.where(usable, c["reward"], 0.0)
    total = subtree_sum(c["parent"], c["depth"], reward)
    count = subtree_sum(c["parent"], c["depth"], usable.astype(np.int64))
    pairs = 0
    for node in tree.nodes:
        kids = [k for k in node.children if count[k] > 0]
        if len(kids) < 2:
            continue
        vals = np.round(total[kids] / count[kids], 9)
        _, n_eq = np.unique(vals, return_counts=True)
        m = len(kids)
        pairs += m * (m - 1) // 2 - int((n_eq * (n_eq - 1) // 2).sum())
    return pairs


@dataclass
class StepMetrics:
    leaves: int
    generated_tokens: int
    effective_leaves: int
    roots: int
    mixed_roots: int
    comparisons: int

    @property
    def effective_sample_ratio(self) -> float:
        return self.effective_leaves / max(1, self.leaves)

    @property
    def mixed_root_ratio(self) -> float:
        return self.mixed_roots / max(1, self.roots)

    @property
    def informative_per_1k_tokens(self) -> float:
        return 1000.0 * self.comparisons / max(1, self.generated_tokens)


def step_metrics(trees: list[RolloutTree], estimator: str, cfg: AdvantageConfig) -> StepMetrics:
    leaves = tokens = eff = mixed = comps = 0
    for t in trees:
        rewards = [n.reward for n in t.leaves()]
        leaves += len(rewards)
        tokens += t.generated_tokens()
        eff += effective_leaves(t, estimator, cfg)
        mixed += int(len(set(rewards)) > 1)
        comps += informative_comparisons(t)
    return StepMetrics(leaves, tokens, eff, len(trees), mixed, comps)
