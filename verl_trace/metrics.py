"""Step metrics of a forest of rollout trees: one definition of each quantity, used by the
simulator benchmark, the rollout runner and the CPU demo alike (docs/algorithm.md §6)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

from .advantage import LeafRecord, group_turn_advantages, tree_grpo_leaf_advantages, tree_turn_advantages
from .config import AdvantageConfig
from .tree import ROOT, LeafStatus, RolloutTree

Estimator = Literal["trace", "tree_grpo", "grpo"]


def effective_leaves(tree: RolloutTree, estimator: Estimator = "trace", cfg: AdvantageConfig | None = None) -> int:
    """Leaves that receive a non-zero advantage from ``estimator`` on at least one of their turns
    that generated tokens. ``grpo`` is GRPO over all leaves of the tree as one flat group, ignoring
    the tree (what ARPO trains with)."""
    cfg = cfg or AdvantageConfig()
    leaves = tree.leaves()
    if estimator == "grpo":
        recs = [LeafRecord((ROOT, -1 - i), 0.0 if n.reward is None else n.reward, n.status) for i, n in enumerate(leaves)]
        return sum(1 for a in group_turn_advantages(recs, cfg) if np.any(a != 0))
    if estimator == "tree_grpo":
        recs = [LeafRecord(tuple(tree.path(n.node_id)), 0.0 if n.reward is None else n.reward, n.status) for n in leaves]
        return int(np.count_nonzero(tree_grpo_leaf_advantages(recs, cfg)))
    adv = tree_turn_advantages(tree, cfg)
    count = 0
    for leaf in leaves:
        path = tree.path(leaf.node_id)[1:]
        if any(a != 0 and tree[u].generated_tokens for u, a in zip(path, adv[leaf.node_id])):
            count += 1
    return count


def informative_comparisons(tree: RolloutTree, threshold: float = 0.5) -> int:
    """Pairs of sibling subtrees (children of one node, the root included) whose mean usable-leaf
    rewards differ. Subtrees without a usable leaf take no part."""
    values: dict[int, list[float]] = {}
    for leaf in tree.leaves():
        if leaf.status is LeafStatus.FAILED:
            continue
        for u in tree.path(leaf.node_id):
            values.setdefault(u, []).append(leaf.reward)
    total = 0
    for node in tree.nodes:
        means = [float(np.mean(values[c])) for c in node.children if c in values]
        for i in range(len(means)):
            total += sum(1 for j in range(i + 1, len(means)) if means[i] != means[j])
    return total


def forest_metrics(
    trees: Iterable[RolloutTree],
    estimator: Estimator = "trace",
    cfg: AdvantageConfig | None = None,
    threshold: float = 0.5,
    prefix: str = "trace/",
) -> dict[str, float]:
    """Effective-sample ratio, mixed-root ratio, informative comparisons (total and per 1k
    generated tokens), leaves per prompt, branch points below the root, generated tokens and
    those saved by prefix sharing, leaves by status."""
    trees = list(trees)
    n_leaves = eff = mixed = cmp = gen = unshared = branch = 0
    per_prompt, statuses = [], dict.fromkeys(LeafStatus, 0)
    for t in trees:
        leaves = t.leaves()
        per_prompt.append(len(leaves))
        n_leaves += len(leaves)
        eff += effective_leaves(t, estimator, cfg)
        s, f = t.outcome_counts(ROOT, threshold)
        mixed += int(s > 0 and f > 0)
        cmp += informative_comparisons(t, threshold)
        gen += t.generated_tokens()
        unshared += t.unshared_generated_tokens()
        # Branch points below the root (the root branches whenever a prompt has several chains).
        branch += sum(1 for n in t.nodes[1:] if len(n.children) >= 2)
        for n in leaves:
            statuses[n.status] += 1
    prompts = max(1, len(trees))
    out = {
        f"{prefix}prompts": float(len(trees)),
        f"{prefix}leaves": float(n_leaves),
        f"{prefix}leaves_per_prompt/mean": n_leaves / prompts,
        f"{prefix}leaves_per_prompt/min": float(min(per_prompt, default=0)),
        f"{prefix}leaves_per_prompt/max": float(max(per_prompt, default=0)),
        f"{prefix}effective_sample_ratio": eff / max(1, n_leaves),
        f"{prefix}mixed_root_ratio": mixed / prompts,
        f"{prefix}informative_comparisons": float(cmp),
        f"{prefix}informative_per_1k_tokens": 1000.0 * cmp / max(1, gen),
        f"{prefix}branch_points": float(branch),
        f"{prefix}tokens_generated": float(gen),
        f"{prefix}tokens_unshared": float(unshared),
        f"{prefix}tokens_saved": float(unshared - gen),
    }
    out.update({f"{prefix}leaves_{st.value}": float(n) for st, n in statuses.items()})
    return out


# Ratios of forest_metrics and the count each is a mean over: merging weights them by it, so
# merging the metrics of disjoint forests gives the metrics of their union.
_RATIO_WEIGHTS = {
    "leaves_per_prompt/mean": "prompts",
    "effective_sample_ratio": "leaves",
    "mixed_root_ratio": "prompts",
    "informative_per_1k_tokens": "tokens_generated",
}


def merge_step_metrics(parts: Sequence[Mapping[str, float]], prefix: str = "trace/") -> dict[str, float]:
    """One step's metrics from the metrics of several disjoint parts of it (rollout workers, each
    with its own trees and planner): counts add up, ``forest_metrics``' ratios are weighted by what
    they average over, ``/min`` and ``/max`` take the extreme, and durations (``*seconds``) the
    longest, since workers run in parallel. Any other key is a count."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for p in parts for k in p):
        values = [float(p[key]) for p in parts if key in p]
        name = key.removeprefix(prefix)
        if key.startswith(prefix) and name in _RATIO_WEIGHTS:
            weights = [float(p.get(prefix + _RATIO_WEIGHTS[name], 0.0)) for p in parts if key in p]
            total = sum(weights)
            out[key] = sum(v * w for v, w in zip(values, weights)) / total if total else 0.0
        elif key.endswith("/min"):
            out[key] = min(values)
        elif key.endswith("/max") or key.endswith("seconds"):
            out[key] = max(values)
        else:
            out[key] = sum(values)
    return out
